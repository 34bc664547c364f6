/* Registry credentials for the origin client: bearer tokens fetched when a registry asks
 * (anonymously, or with config.json credentials as basic auth on the token endpoint), cached
 * per repository until shortly before they expire, and basic auth for registries that want
 * it. Fetches that meet a 401 park on their repository's token slot; one token fetch runs per
 * slot, and its end sends every parked fetch on (a new attempt) or fails them all.
 *
 * Bounds: TOKEN_SLOTS slots (the least recently used one that is not fetching is reused); a
 * token answer of at most TOKEN_BODY_MAX bytes. Locking: the slots are under origin.lock,
 * never held across a call into the HTTP client or a done callback. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

#include <curl/curl.h>

#include "registry/origin_int.h"
#include "util/log.h"

/* Lock held. */
static struct token_slot *token_slot(struct origin *o, const struct job *j, bool create) {
        char key[sizeof(o->tokens[0].key)];
        snprintf(key, sizeof(key), "%s|%s", j->registry, j->repository);
        struct token_slot *victim = NULL;
        for (size_t i = 0; i < TOKEN_SLOTS; i++) {
                struct token_slot *t = &o->tokens[i];
                if (strcmp(t->key, key) == 0)
                        return t;
                if (t->fetching)
                        continue;
                if (!victim || t->used_ms < victim->used_ms)
                        victim = t;
        }
        if (!create || !victim)
                return NULL;
        memset(victim, 0, sizeof(*victim));
        memcpy(victim->key, key, sizeof(victim->key));
        return victim;
}

/* The "Authorization: ..." line for J into OUT, or false when there is no token for it. */
bool origin_auth_header(struct origin *o, const struct job *j, char *out, size_t len) {
        pthread_mutex_lock(&o->lock);
        struct token_slot *t = token_slot(o, j, false);
        uint64_t now = now_ms();
        bool ok = t && t->value[0] && !t->fetching && !(t->expires_ms && now >= t->expires_ms);
        if (ok) {
                t->used_ms = now;
                snprintf(out, len, "Authorization: %s", t->value);
        }
        pthread_mutex_unlock(&o->lock);
        return ok;
}

/* Looks up config.json credentials for REGISTRY into OUT ("user:pass"). */
bool origin_credentials_for(struct origin *o, const char *registry, char *out, size_t len) {
        return o->credentials_json &&
               auth_find_credentials(o->credentials_json, registry, out, len) == 0;
}

/* Ends the wait of the fetches parked on T: submitted again (ERR 0) or failed. */
static void release_parked(struct origin *o, struct token_slot *t, int err, const char *reason) {
        pthread_mutex_lock(&o->lock);
        struct job *p = t->parked;
        t->parked = NULL;
        t->fetching = false;
        pthread_mutex_unlock(&o->lock);
        while (p) {
                struct job *next = p->next;
                p->next = NULL;
                if (err == 0)
                        origin_submit_attempt(o, p, 0);
                else
                        origin_job_finish(o, p, err, reason);
                p = next;
        }
}

/* Ends J with ERR whatever its kind: a token job takes its parked fetches down with it. */
void origin_job_abort(struct origin *o, struct job *j, int err, const char *reason) {
        if (j->kind == JOB_TOKEN) {
                release_parked(o, j->token, err, reason);
                origin_job_free(j);
        } else {
                origin_job_finish(o, j, err, reason);
        }
}

/* Starts or joins a token fetch for J after a 401 carrying CHALLENGE. */
void origin_authenticate(struct origin *o, struct job *j, const struct auth_challenge *ch) {
        j->auth_tried = true;
        char cred[CREDENTIALS_MAX];
        bool have_cred = origin_credentials_for(o, j->registry, cred, sizeof(cred));
        if (ch->scheme == AUTH_BASIC && !have_cred) {
                origin_job_finish(
                        o, j, -EACCES,
                        "registry wants basic auth and no credentials are configured for it");
                return;
        }
        pthread_mutex_lock(&o->lock);
        struct token_slot *t = token_slot(o, j, true);
        if (!t) {
                pthread_mutex_unlock(&o->lock);
                origin_job_finish(o, j, -EAGAIN, "too many token fetches at once");
                return;
        }
        if (ch->scheme == AUTH_BASIC) {
                unsigned char enc[((CREDENTIALS_MAX + 2) / 3) * 4 + 1];
                EVP_EncodeBlock(enc, (const unsigned char *)cred, (int)strlen(cred));
                snprintf(t->value, sizeof(t->value), "Basic %s", enc);
                t->expires_ms = 0;
                pthread_mutex_unlock(&o->lock);
                origin_submit_attempt(o, j, 0);
                return;
        }
        j->next = t->parked;
        t->parked = j;
        bool start = !t->fetching;
        t->fetching = true;
        pthread_mutex_unlock(&o->lock);
        if (!start)
                return;
        struct job *tj = calloc(1, sizeof(*tj));
        char *url = malloc(URL_MAX);
        if (!tj || !url) {
                free(tj);
                free(url);
                release_parked(o, t, -ENOMEM, "out of memory");
                return;
        }
        char *svc = curl_easy_escape(NULL, ch->service, 0);
        char scope_default[600];
        snprintf(scope_default, sizeof(scope_default), "repository:%s:pull", j->repository);
        char *scope = curl_easy_escape(NULL, ch->scope[0] ? ch->scope : scope_default, 0);
        snprintf(url, URL_MAX, "%s%sservice=%s&scope=%s", ch->realm,
                 strchr(ch->realm, '?') ? "&" : "?", svc ? svc : "", scope ? scope : "");
        curl_free(svc);
        curl_free(scope);
        tj->o = o;
        tj->kind = JOB_TOKEN;
        memcpy(tj->registry, j->registry, sizeof(tj->registry));
        memcpy(tj->repository, j->repository, sizeof(tj->repository));
        tj->deadline_ms = j->deadline_ms;
        tj->token = t;
        tj->token_url = url;
        origin_submit_attempt(o, tj, 0);
}

void origin_token_done(struct origin *o, struct job *tj, const struct http_response *r) {
        struct token_slot *t = tj->token;
        char reason[512];
        if (r->err == -ETIMEDOUT && !r->started) {
                origin_job_abort(o, tj, -ETIMEDOUT, "token fetch timed out");
                return;
        }
        if (r->err < 0 || r->status != 200) {
                snprintf(reason, sizeof(reason), "token request failed: %s",
                         r->err < 0 ? r->reason
                                    : (r->status == 401 || r->status == 403 ? "credentials refused"
                                                                            : "unexpected status"));
                origin_job_abort(o, tj,
                                 r->err == -ECANCELED ? -ECANCELED
                                 : r->err < 0         ? -ECONNREFUSED
                                                      : -EACCES,
                                 r->err == -ECANCELED ? "shutting down" : reason);
                return;
        }
        char token[sizeof(t->value) - 8];
        unsigned expires_in = 60;
        if (!r->body.data || auth_parse_token_response((const char *)r->body.data, token,
                                                       sizeof(token), &expires_in) < 0) {
                origin_job_abort(o, tj, -EPROTO, "token endpoint answered without a token");
                return;
        }
        pthread_mutex_lock(&o->lock);
        snprintf(t->value, sizeof(t->value), "Bearer %s", token);
        /* Renew a little early so a token never expires mid-request. */
        uint64_t life = (uint64_t)expires_in * 1000u;
        t->expires_ms = now_ms() + (life > 10000 ? life - 5000 : life);
        pthread_mutex_unlock(&o->lock);
        origin_job_abort(o, tj, 0, NULL); /* releases the parked fetches into new attempts */
}
