/* blobctl's client of the daemon: HTTP over the control socket (libcurl over AF_UNIX), the
 * request built from the control API's route table, the answer bounded (RESPONSE_MAX) and
 * parsed; connection failures mapped to blobctl's exit codes (3 not running, 5 not root). */
#include "tools/blobctl_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/api_routes.h"

#define RESPONSE_MAX (16u << 20)

struct response {
        char *data;
        size_t len;
        bool too_big;
};

static size_t on_data(char *p, size_t size, size_t n, void *ud) {
        struct response *r = ud;
        size_t add = size * n;
        if (r->len + add > RESPONSE_MAX) {
                r->too_big = true;
                return 0;
        }
        char *grown = realloc(r->data, r->len + add + 1);
        if (!grown)
                return 0;
        memcpy(grown + r->len, p, add);
        r->data = grown;
        r->len += add;
        r->data[r->len] = '\0';
        return add;
}

/* A request's path and query: the longest query the daemon takes, and room for the path. */
#define REQUEST_PATH_MAX (ROUTE_QUERY_MAX + 512)

/* Performs METHOD PATH on the control socket. Returns an exit code; on success *RET holds the
 * parsed answer. QUIET_DOWN: do not print the "not running" message (the caller falls back). */
static int call(const struct opts *o, const char *method, const char *path, json_t **ret,
                bool quiet_down) {
        CURL *c = curl_easy_init();
        if (!c) {
                fprintf(stderr, "blobctl: out of memory\n");
                return EXIT_FAILED;
        }
        char url[REQUEST_PATH_MAX + 32];
        if ((size_t)snprintf(url, sizeof(url), "http://localhost%s", path) >= sizeof(url)) {
                curl_easy_cleanup(c);
                fprintf(stderr, "blobctl: the request is too long\n");
                return EXIT_USAGE;
        }
        struct response resp = {0};
        curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, o->socket_path);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (strcmp(method, "POST") == 0)
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L); /* verify of a large blob reads it all */
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        CURLcode cc = curl_easy_perform(c);
        long status = 0, os_errno = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
        curl_easy_cleanup(c);
        if (cc == CURLE_COULDNT_CONNECT && (os_errno == EACCES || os_errno == EPERM)) {
                /* The socket is there and root's (0600): the daemon runs, we may not talk to
                 * it. Not "not running", and no fall-back to the index (0600 as well). */
                fprintf(stderr, "blobctl: permission denied (run as root): %s\n", o->socket_path);
                free(resp.data);
                return EXIT_DENIED;
        }
        if (cc == CURLE_COULDNT_CONNECT) {
                if (!quiet_down)
                        fprintf(stderr,
                                "blobctl: the daemon is not running (nothing listens on %s); "
                                "start it with 'systemctl start p2pblobs'\n",
                                o->socket_path);
                free(resp.data);
                return EXIT_DOWN;
        }
        if (cc != CURLE_OK) {
                fprintf(stderr, "blobctl: talking to the daemon failed: %s\n",
                        resp.too_big ? "answer too large" : curl_easy_strerror(cc));
                free(resp.data);
                return EXIT_FAILED;
        }
        json_error_t jerr;
        json_t *body = resp.data ? json_loads(resp.data, 0, &jerr) : NULL;
        free(resp.data);
        if (status != 200) {
                const char *msg = body ? json_string_value(json_object_get(body, "error")) : NULL;
                fprintf(stderr, "blobctl: %s\n", msg ? msg : "the daemon answered an error");
                json_decref(body);
                return status == 400 ? EXIT_USAGE : status == 404 ? EXIT_NOT_FOUND : EXIT_FAILED;
        }
        if (!body) {
                fprintf(stderr, "blobctl: the daemon's answer is not JSON: %s\n", jerr.text);
                return EXIT_FAILED;
        }
        *ret = body;
        return EXIT_OK;
}

/* Performs request Q, built from the control API's route table (net/api_routes.h) as the
 * daemon routes it. Returns an exit code, as call(). */
int bc_request(const struct opts *o, const struct api_request *q, json_t **ret, bool quiet_down) {
        const char *method;
        char path[REQUEST_PATH_MAX]; /* call() prefixes it with the URL's scheme and host */
        int r = api_build_request(q, &method, path, sizeof(path));
        if (r < 0) {
                fprintf(stderr, "blobctl: %s\n",
                        r == -ENAMETOOLONG ? "the request is too long"
                                           : "cannot build the request (a blobctl bug)");
                return EXIT_USAGE;
        }
        return call(o, method, path, ret, quiet_down);
}

/* For blobctl_layers.c: its requests, from the same table. */
int bc_request_layers(void *ud, const struct api_request *q, json_t **ret) {
        return bc_request(ud, q, ret, false);
}
