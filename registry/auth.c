/* Registry authentication, the parsing half: WWW-Authenticate challenges, docker config.json
 * credentials and token endpoint answers. The transfers live in origin.c.
 *
 * Everything here reads text that a remote server or a file on the node controls, so it is
 * written to refuse rather than guess:
 *
 *   - A challenge header may hold several challenges ("Basic realm=x, Bearer realm=y"); we
 *     take the first Bearer, else the first Basic, and skip schemes we do not speak. Quoted
 *     strings are unescaped; control characters anywhere are refused.
 *   - A Bearer realm must be an http:// or https:// URL: the realm is a URL that origin.c
 *     hands to libcurl, which also speaks file://, and a registry must not be able to make
 *     us read local files.
 *   - Tokens must be printable ASCII without spaces (they go into an Authorization header
 *     verbatim; a CR or LF there would be header injection). expires_in below 60 s is raised
 *     to 60, as the distribution spec and Docker's client do.
 *   - Credentials are never logged; the decoded copies we make are wiped before free.
 *
 * Invariants: on error nothing is written to out-parameters; outputs are NUL-terminated and
 * fit their buffers or the call fails with -ENAMETOOLONG. Pure (no I/O), thread-safe; cost is
 * linear in the input (jansson parses the JSON texts once).
 */
#include "registry/auth.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/evp.h>

/* Largest base64 "auth" value accepted: a user:pass this long is not one. */
#define AUTH_B64_MAX 16384

/* --- challenges ------------------------------------------------------------------------- */

static bool is_ows(char c) {
        return c == ' ' || c == '\t';
}

/* RFC 9110 tchar. */
static bool is_tchar(char c) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
                return true;
        return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_ctl(char c) {
        unsigned char u = (unsigned char)c;
        return (u < 0x20 && c != '\t') || u == 0x7f;
}

static const char *skip_ows(const char *p) {
        while (is_ows(*p))
                p++;
        return p;
}

/* Parses a parameter value at *PP (a quoted string with \-escapes, or a bare run up to ',' or
 * blank) into OUT (may be NULL: value not kept). -EINVAL, -ENAMETOOLONG. */
static int parse_param_value(const char **pp, char *out, size_t out_len) {
        const char *p = *pp;
        size_t n = 0;

        if (*p == '"') {
                for (p++;; p++) {
                        char c = *p;
                        if (c == '\0')
                                return -EINVAL; /* unterminated */
                        if (c == '"')
                                break;
                        if (c == '\\') {
                                c = *++p;
                                if (c == '\0')
                                        return -EINVAL;
                        }
                        if (is_ctl(c))
                                return -EINVAL;
                        if (out) {
                                if (n + 1 >= out_len)
                                        return -ENAMETOOLONG;
                                out[n] = c;
                        }
                        n++;
                }
                p++;
        } else {
                /* Strictly a token, but registries put URLs here unquoted: take any printable
                 * run that cannot end the parameter. */
                for (; *p && *p != ',' && *p != '"' && !is_ows(*p); p++) {
                        if (is_ctl(*p))
                                return -EINVAL;
                        if (out) {
                                if (n + 1 >= out_len)
                                        return -ENAMETOOLONG;
                                out[n] = *p;
                        }
                        n++;
                }
                if (n == 0)
                        return -EINVAL;
        }
        if (out)
                out[n] = '\0';
        *pp = p;
        return 0;
}

/* Parses one challenge (scheme and its parameters) at *PP, leaving *PP at the next
 * challenge's scheme or at the end. Unknown schemes come back as AUTH_NONE, their
 * parameters checked for syntax but not kept. */
static int parse_one_challenge(const char **pp, struct auth_challenge *c) {
        const char *p = *pp, *scheme = p;
        size_t slen;
        bool have_realm = false, have_service = false, have_scope = false;

        while (is_tchar(*p))
                p++;
        slen = (size_t)(p - scheme);
        if (slen == 0)
                return -EINVAL;
        memset(c, 0, sizeof(*c));
        if (slen == 6 && strncasecmp(scheme, "bearer", 6) == 0)
                c->scheme = AUTH_BEARER;
        else if (slen == 5 && strncasecmp(scheme, "basic", 5) == 0)
                c->scheme = AUTH_BASIC;
        else
                c->scheme = AUTH_NONE;
        if (*p != '\0' && *p != ',' && !is_ows(*p))
                return -EINVAL;

        for (;;) {
                const char *name, *q;
                size_t nlen;
                char *dst = NULL;
                size_t dst_len = 0;
                bool *seen = NULL;
                int r;

                while (is_ows(*p) || *p == ',')
                        p++;
                if (*p == '\0')
                        break;
                name = p;
                while (is_tchar(*p))
                        p++;
                nlen = (size_t)(p - name);
                if (nlen == 0)
                        return -EINVAL;
                q = skip_ows(p);
                if (*q != '=') {
                        /* A token without '=' is the scheme of the next challenge. */
                        p = name;
                        break;
                }
                p = skip_ows(q + 1);

                /* Parameter names are case-insensitive; a repeated one keeps its first value
                 * (RFC 9110 forbids repeats, and the first is what the server meant first). */
                if (c->scheme != AUTH_NONE) {
                        if (nlen == 5 && strncasecmp(name, "realm", 5) == 0 && !have_realm) {
                                dst = c->realm, dst_len = sizeof(c->realm), seen = &have_realm;
                        } else if (nlen == 7 && strncasecmp(name, "service", 7) == 0 &&
                                   !have_service) {
                                dst = c->service, dst_len = sizeof(c->service);
                                seen = &have_service;
                        } else if (nlen == 5 && strncasecmp(name, "scope", 5) == 0 && !have_scope) {
                                dst = c->scope, dst_len = sizeof(c->scope), seen = &have_scope;
                        }
                }
                r = parse_param_value(&p, dst, dst_len);
                if (r < 0)
                        return r;
                if (seen)
                        *seen = true;
                p = skip_ows(p);
                if (*p != '\0' && *p != ',')
                        return -EINVAL;
        }
        if (c->scheme == AUTH_BEARER) {
                if (!have_realm)
                        return -EINVAL;
                if (strncasecmp(c->realm, "https://", 8) != 0 &&
                    strncasecmp(c->realm, "http://", 7) != 0)
                        return -EINVAL;
        }
        *pp = p;
        return 0;
}

int auth_parse_challenge(const char *value, struct auth_challenge *ret) {
        struct auth_challenge c, basic;
        bool have_basic = false;
        const char *p;

        if (!value)
                return -EINVAL;
        p = value;
        for (;;) {
                int r;

                while (is_ows(*p) || *p == ',')
                        p++;
                if (*p == '\0')
                        break;
                r = parse_one_challenge(&p, &c);
                if (r < 0)
                        return r;
                if (c.scheme == AUTH_BEARER) {
                        *ret = c;
                        return 0;
                }
                if (c.scheme == AUTH_BASIC && !have_basic) {
                        basic = c;
                        have_basic = true;
                }
        }
        if (!have_basic)
                return -EINVAL; /* empty, or only schemes we cannot answer */
        *ret = basic;
        return 0;
}

/* --- docker config.json ----------------------------------------------------------------- */

static bool is_b64_char(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '+' || c == '/';
}

/* Decodes standard padded base64 (what Docker writes) into a fresh buffer the caller wipes
 * and frees. EVP_DecodeBlock() returns 3 bytes per 4 characters including the zero bytes
 * that padding stands for, so the true length is computed from the padding here. */
static int b64_decode(const char *in, size_t len, unsigned char **ret, size_t *ret_len) {
        size_t pad = 0, out_len;
        unsigned char *buf;
        int n;

        if (len == 0 || len % 4 != 0 || len > AUTH_B64_MAX)
                return -EINVAL;
        if (in[len - 1] == '=')
                pad = in[len - 2] == '=' ? 2 : 1;
        for (size_t i = 0; i < len - pad; i++)
                if (!is_b64_char(in[i]))
                        return -EINVAL;
        buf = malloc(len / 4 * 3 + 1);
        if (!buf)
                return -ENOMEM;
        n = EVP_DecodeBlock(buf, (const unsigned char *)in, (int)len);
        if (n < 0 || (size_t)n != len / 4 * 3) {
                explicit_bzero(buf, len / 4 * 3 + 1);
                free(buf);
                return -EINVAL;
        }
        out_len = (size_t)n - pad;
        buf[out_len] = '\0';
        *ret = buf;
        *ret_len = out_len;
        return 0;
}

static int copy_credentials(const char *s, size_t len, char *out, size_t out_len) {
        /* Basic auth cannot carry a user name with ':' nor anything with a NUL; without a
         * ':' it is not "user:pass" at all. */
        if (!memchr(s, ':', len) || memchr(s, '\0', len))
                return -EINVAL;
        if (len >= out_len)
                return -ENAMETOOLONG;
        memcpy(out, s, len);
        out[len] = '\0';
        return 0;
}

/* Credentials from one auths entry. -ENOENT when the entry has none we can use (an empty
 * object, as Docker writes when a credential helper holds the secret). */
static int entry_credentials(json_t *entry, char *out, size_t out_len) {
        json_t *auth, *user, *pass;

        if (!json_is_object(entry))
                return -EINVAL;
        auth = json_object_get(entry, "auth");
        if (auth && !json_is_string(auth) && !json_is_null(auth))
                return -EINVAL;
        if (json_is_string(auth) && json_string_length(auth) > 0) {
                unsigned char *dec;
                size_t dlen;
                int r = b64_decode(json_string_value(auth), json_string_length(auth), &dec, &dlen);
                if (r < 0)
                        return r;
                r = copy_credentials((const char *)dec, dlen, out, out_len);
                explicit_bzero(dec, dlen);
                free(dec);
                return r;
        }

        user = json_object_get(entry, "username");
        pass = json_object_get(entry, "password");
        if ((user && !json_is_string(user)) || (pass && !json_is_string(pass)))
                return -EINVAL;
        if (!user || json_string_length(user) == 0)
                return -ENOENT;
        if (!pass)
                return -EINVAL;
        {
                size_t ul = json_string_length(user), pl = json_string_length(pass);
                const char *u = json_string_value(user), *pw = json_string_value(pass);

                if (memchr(u, ':', ul) || memchr(u, '\0', ul) || memchr(pw, '\0', pl))
                        return -EINVAL;
                if (ul + 1 + pl >= out_len)
                        return -ENAMETOOLONG;
                memcpy(out, u, ul);
                out[ul] = ':';
                memcpy(out + ul + 1, pw, pl);
                out[ul + 1 + pl] = '\0';
        }
        return 0;
}

/* Docker Hub is reached as registry-1.docker.io but its credentials are filed under
 * "https://index.docker.io/v1/". */
static const char *canonical_registry(const char *r, size_t len, size_t *ret_len) {
        static const char hub[] = "index.docker.io";

        if ((len == 9 && strncasecmp(r, "docker.io", 9) == 0) ||
            (len == 20 && strncasecmp(r, "registry-1.docker.io", 20) == 0)) {
                *ret_len = sizeof(hub) - 1;
                return hub;
        }
        *ret_len = len;
        return r;
}

/* Whether config key KEY names REGISTRY: an optional http(s):// in front, an optional "/v1/"
 * or "/" behind, host names compared case-insensitively. */
static bool key_matches(const char *key, const char *registry) {
        size_t klen, rlen;
        const char *k = key, *r;

        if (strncasecmp(k, "https://", 8) == 0)
                k += 8;
        else if (strncasecmp(k, "http://", 7) == 0)
                k += 7;
        klen = strlen(k);
        if (klen >= 4 && memcmp(k + klen - 4, "/v1/", 4) == 0)
                klen -= 4;
        else if (klen >= 1 && k[klen - 1] == '/')
                klen -= 1;
        k = canonical_registry(k, klen, &klen);
        r = canonical_registry(registry, strlen(registry), &rlen);
        return klen == rlen && strncasecmp(k, r, klen) == 0;
}

int auth_find_credentials(const char *config_json, const char *registry, char *out,
                          size_t out_len) {
        json_t *root, *auths, *entry;
        const char *key;
        int r = -ENOENT;

        if (!config_json || !registry || !*registry || !out)
                return -EINVAL;
        root = json_loads(config_json, 0, NULL);
        if (!root)
                return -EINVAL;
        if (!json_is_object(root)) {
                r = -EINVAL;
                goto out_decref;
        }
        auths = json_object_get(root, "auths");
        if (!auths)
                goto out_decref; /* -ENOENT: no credentials at all, go anonymous */
        if (!json_is_object(auths)) {
                r = -EINVAL;
                goto out_decref;
        }
        /* The exact key first, then any spelling that names the same registry. */
        entry = json_object_get(auths, registry);
        if (entry) {
                r = entry_credentials(entry, out, out_len);
                if (r != -ENOENT)
                        goto out_decref;
        }
        json_object_foreach(auths, key, entry) {
                if (strcmp(key, registry) == 0 || !key_matches(key, registry))
                        continue;
                r = entry_credentials(entry, out, out_len);
                if (r != -ENOENT)
                        goto out_decref;
        }
        r = -ENOENT;
out_decref:
        json_decref(root);
        return r;
}

/* --- token responses -------------------------------------------------------------------- */

static bool token_chars_ok(const char *t, size_t len) {
        for (size_t i = 0; i < len; i++) {
                unsigned char u = (unsigned char)t[i];
                if (u <= 0x20 || u >= 0x7f)
                        return false;
        }
        return true;
}

int auth_parse_token_response(const char *json, char *out, size_t out_len,
                              unsigned *ret_expires_in) {
        json_t *root, *tok, *exp;
        unsigned expires = 60;
        size_t len;
        int r;

        if (!json || !out)
                return -EINVAL;
        root = json_loads(json, 0, NULL);
        if (!root)
                return -EINVAL;
        if (!json_is_object(root)) {
                r = -EINVAL;
                goto out_decref;
        }
        /* "token" wins; an empty one falls back to "access_token" as Docker's client does. */
        tok = json_object_get(root, "token");
        if (!json_is_string(tok) || json_string_length(tok) == 0)
                tok = json_object_get(root, "access_token");
        if (!json_is_string(tok) || json_string_length(tok) == 0) {
                r = -EINVAL;
                goto out_decref;
        }
        len = json_string_length(tok);
        if (!token_chars_ok(json_string_value(tok), len)) {
                r = -EINVAL;
                goto out_decref;
        }
        if (len >= out_len) {
                r = -ENAMETOOLONG;
                goto out_decref;
        }

        /* Absent, malformed or short lifetimes all mean the spec's 60 s minimum: a wrong
         * expiry only costs an early refresh, never a failed pull. */
        exp = json_object_get(root, "expires_in");
        if (json_is_integer(exp)) {
                json_int_t v = json_integer_value(exp);
                if (v > UINT_MAX)
                        expires = UINT_MAX;
                else if (v > 60)
                        expires = (unsigned)v;
        } else if (json_is_real(exp)) {
                double v = json_real_value(exp);
                if (v >= (double)UINT_MAX)
                        expires = UINT_MAX;
                else if (v > 60)
                        expires = (unsigned)v;
        }

        memcpy(out, json_string_value(tok), len);
        out[len] = '\0';
        if (ret_expires_in)
                *ret_expires_in = expires;
        r = 0;
out_decref:
        json_decref(root);
        return r;
}
