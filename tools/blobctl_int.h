/* blobctl's private header: what its files share (blobctl.c: the command line and the blob
 * commands; blobctl_client.c: talking to the daemon; blobctl_stat.c: stat, ls and peers, with
 * the index read instead when the daemon is down). Functions one file defines and another
 * calls are named bc_*. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct api_request;

enum {
        EXIT_OK = 0,
        EXIT_FAILED = 1,
        EXIT_USAGE = 2,
        EXIT_DOWN = 3,
        EXIT_NOT_FOUND = 4,
        EXIT_DENIED = 5
};

struct opts {
        const char *socket_path;
        const char *state_dir;
        bool json;
        bool all;
        bool watch;
        unsigned interval_s;
        bool tty;     /* stdout is a terminal */
        bool err_tty; /* stderr is a terminal: progress bars go there */
        bool colour;  /* tty and NO_COLOR unset */
};

/* blobctl.c: output helpers. The colours are "" unless O->colour. */
const char *bc_bold(const struct opts *o);
const char *bc_red(const struct opts *o);
const char *bc_yellow(const struct opts *o);
const char *bc_green(const struct opts *o);
const char *bc_reset(const struct opts *o);
/* BYTES in a human unit, written to BUF (LEN bytes); returns BUF. */
const char *bc_human(uint64_t bytes, char *buf, size_t len);
/* How long ago WHEN (seconds since the epoch; <= 0: never) was, written to BUF; returns BUF. */
const char *bc_ago(int64_t when, char *buf, size_t len);
/* The integer OBJ.A (or OBJ.A.B when B is set), 0 when absent or not an integer. */
uint64_t bc_num(json_t *obj, const char *a, const char *b);
/* PART of WHOLE in percent (0 when WHOLE is 0). */
double bc_pct(uint64_t part, uint64_t whole);
/* V on stdout, indented, keys sorted (--json). */
void bc_print_json(json_t *v);

/* blobctl_client.c */

/* Performs request Q, built from the control API's route table (net/api_routes.h) as the
 * daemon routes it. Returns an exit code; on success *RET holds the parsed answer (the
 * caller's). QUIET_DOWN: do not print the "not running" message (the caller falls back). */
int bc_request(const struct opts *o, const struct api_request *q, json_t **ret, bool quiet_down);

/* bc_request for blobctl_layers.c (a blobctl_request_fn; UD: the struct opts). */
int bc_request_layers(void *ud, const struct api_request *q, json_t **ret);

/* blobctl_stat.c: the commands; each returns an exit code (EXIT_DOWN, after what the index
 * says, when the daemon is down). */
int bc_cmd_stat(const struct opts *o);
int bc_cmd_ls(const struct opts *o);
int bc_cmd_peers(const struct opts *o);
