/* The HTTP client's private structures and the helpers its two files share (SQLite's
 * sqliteInt.h habit): http_client.c holds the interface, the jobs and their completion;
 * http_client_loop.c the loop thread, its curl callbacks and the caps. The threading rules, a
 * job's life and the timers are in http_client.c's essay. Not for other modules. */
#pragma once
#include "net/http_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/log.h"

#define HOST_KEY_MAX 256
#define POLL_MAX_MS 1000

struct host_slot {
        char host[HOST_KEY_MAX];
        unsigned active; /* 0: free row */
};

struct http_group {
        struct http_client *c;
        atomic_bool closed;   /* written under c->lock; read by the loop without it */
        unsigned outstanding; /* c->lock: jobs submitted and not completed */
        unsigned cap;         /* jobs running at once; 0: none */
        atomic_uint active;   /* written by the loop; read by http_group_counts() */
        /* The group's own per-host cap (0: none) and its table of hosts with running jobs of
         * the group (nslots rows: as many as the group can run at once); loop thread only,
         * once set before the first submit. */
        unsigned per_host;
        struct host_slot *slots;
        unsigned nslots;
};

struct job {
        struct job *prev, *next;
        struct http_request req; /* strings point into the copies below */
        char *url, *range, *protocols, *redir_protocols, *ca_file, *userpwd, *method;
        struct curl_slist *hdrs;
        char host[HOST_KEY_MAX];

        bool call; /* http_client_call(): no transfer, done runs when due */
        CURL *easy;
        struct host_slot *slot, *gslot; /* the client's row of its host, its group's */
        struct http_response resp;
        char errbuf[CURL_ERROR_SIZE];
        uint64_t start_ms, last_byte_ms, start_us;
        bool stalled;
        int data_err; /* a body or header cap, or on_data's -errno */
};

struct jlist {
        struct job *head, *tail;
};

struct http_client {
        struct http_client_config cfg;
        CURLM *multi;
        pthread_t thread;

        pthread_mutex_t lock; /* incoming, nqueued, stopping, cancel_pending, stats, groups */
        pthread_cond_t cond;  /* a job of a group completed */
        struct jlist incoming;
        size_t nqueued; /* incoming + waiting */
        bool stopping;
        bool cancel_pending; /* a group was closed: the loop looks for its jobs */
        struct http_client_stats stats;

        /* loop thread only */
        struct jlist waiting, running;
        unsigned active;
        struct host_slot *slots; /* max_inflight rows */
};

/* ---- lists ---------------------------------------------------------------------------- */

static inline void list_push(struct jlist *l, struct job *j) {
        j->next = NULL;
        j->prev = l->tail;
        if (l->tail)
                l->tail->next = j;
        else
                l->head = j;
        l->tail = j;
}

static inline void list_remove(struct jlist *l, struct job *j) {
        if (j->prev)
                j->prev->next = j->next;
        else
                l->head = j->next;
        if (j->next)
                j->next->prev = j->prev;
        else
                l->tail = j->prev;
        j->prev = j->next = NULL;
}

static inline void list_splice(struct jlist *to, struct jlist *from) {
        if (!from->head)
                return;
        if (to->tail) {
                to->tail->next = from->head;
                from->head->prev = to->tail;
        } else {
                to->head = from->head;
        }
        to->tail = from->tail;
        from->head = from->tail = NULL;
}

static inline uint64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Ends J: settles err, class and reason unless ERR already did (a stall, a cancel), calls
 * done, and frees J. J is on no list. Loop thread. */
void hc_complete(struct http_client *c, struct job *j, int err, enum fetch_err cls,
                 const char *reason);

/* Ends J with -ECANCELED and REASON. Loop thread. */
void hc_cancel(struct http_client *c, struct job *j, const char *reason);

/* The loop thread (http_client_loop.c): runs until the client stops. */
void *hc_loop_main(void *arg);
