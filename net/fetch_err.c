/* Network fetch failures: one table, one row a class, says what each means for fail-over.
 * See fetch_err.h. Adding a class is adding a row; the predicates read nothing else. */
#include "net/fetch_err.h"

#include <errno.h>

#include <curl/curl.h>

static const struct {
        const char *name;
        int err;          /* what clients answer with */
        bool transient;   /* retry the same source later */
        bool peer_fault;  /* blame the source, try the next */
        bool unreachable; /* no answer at all */
} classes[FETCH_ERR_COUNT] = {
        [FETCH_OK] = {"ok", 0, false, false, false},
        [FETCH_ERR_CONNECT] = {"connect failed", -ECONNREFUSED, true, true, true},
        [FETCH_ERR_TIMEOUT] = {"timed out", -ETIMEDOUT, true, true, true},
        [FETCH_ERR_TRANSFER] = {"transfer broke off", -EIO, true, true, false},
        [FETCH_ERR_SETUP] = {"cannot connect as configured (tls, scheme, redirects)", -EPROTO,
                             false, true, false},
        [FETCH_ERR_SERVER] = {"server error", -EREMOTEIO, true, false, true},
        [FETCH_ERR_BUSY] = {"busy", -EREMOTEIO, true, false, false},
        [FETCH_ERR_NOT_FOUND] = {"not found", -ENOENT, false, false, false},
        [FETCH_ERR_DENIED] = {"access denied", -EACCES, false, false, false},
        [FETCH_ERR_REFUSED] = {"request refused", -EPROTO, false, false, false},
        [FETCH_ERR_PROTOCOL] = {"wrong answer", -EPROTO, false, true, false},
        [FETCH_ERR_CORRUPT] = {"digest mismatch", -EBADMSG, false, true, false},
        [FETCH_ERR_CANCELED] = {"canceled", -ECANCELED, false, false, true},
        [FETCH_ERR_LOCAL] = {"failed on this node", -ENOMEM, false, false, false},
};

static bool valid(enum fetch_err e) {
        return (unsigned)e < FETCH_ERR_COUNT;
}

const char *fetch_err_strerror(enum fetch_err e) {
        return valid(e) ? classes[e].name : "unknown failure";
}

bool fetch_err_is_transient(enum fetch_err e) {
        return valid(e) && classes[e].transient;
}

bool fetch_err_is_peer_fault(enum fetch_err e) {
        return valid(e) && classes[e].peer_fault;
}

bool fetch_err_is_unreachable(enum fetch_err e) {
        return valid(e) && classes[e].unreachable;
}

int fetch_err_to_errno(enum fetch_err e) {
        return valid(e) ? classes[e].err : -EIO;
}

enum fetch_err fetch_err_from_errno(int err) {
        switch (err) {
        case 0:
                return FETCH_OK;
        case -ECONNREFUSED:
        case -EHOSTUNREACH:
        case -ENETUNREACH:
                return FETCH_ERR_CONNECT;
        case -ETIMEDOUT:
                return FETCH_ERR_TIMEOUT;
        case -EIO:
                return FETCH_ERR_TRANSFER;
        case -EREMOTEIO:
                return FETCH_ERR_SERVER;
        case -ENOENT:
                return FETCH_ERR_NOT_FOUND;
        case -EACCES:
                return FETCH_ERR_DENIED;
        case -EPROTO:
                return FETCH_ERR_PROTOCOL;
        case -EBADMSG:
                return FETCH_ERR_CORRUPT;
        case -ECANCELED:
                return FETCH_ERR_CANCELED;
        default:
                return FETCH_ERR_LOCAL;
        }
}

enum fetch_err fetch_err_from_http(long status) {
        if (status >= 200 && status < 300)
                return FETCH_OK;
        switch (status) {
        case 401:
        case 403:
                return FETCH_ERR_DENIED;
        case 404:
        case 416:
                return FETCH_ERR_NOT_FOUND;
        case 429:
        case 503:
                return FETCH_ERR_BUSY;
        }
        return status >= 500 ? FETCH_ERR_SERVER : FETCH_ERR_REFUSED;
}

enum fetch_err fetch_err_from_curl(int code) {
        switch ((CURLcode)code) {
        case CURLE_OK:
                return FETCH_OK;
        case CURLE_COULDNT_CONNECT:
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
                return FETCH_ERR_CONNECT;
        case CURLE_OPERATION_TIMEDOUT:
                return FETCH_ERR_TIMEOUT;
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_TOO_MANY_REDIRECTS:
                return FETCH_ERR_SETUP;
        case CURLE_OUT_OF_MEMORY:
                return FETCH_ERR_LOCAL;
        default:
                return FETCH_ERR_TRANSFER;
        }
}
