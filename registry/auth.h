/* Registry authentication helpers (pure parsing; the transfers live in origin.c).
 *
 * A registry answers 401 with WWW-Authenticate: Bearer realm="...",service="...",scope="..."
 * (or Basic realm="..."). We then fetch a token from REALM?service=..&scope=.. (anonymously, or
 * with credentials from a docker-style config.json) and retry with "Authorization: Bearer". */
#pragma once
#include <stdbool.h>
#include <stddef.h>

enum auth_scheme { AUTH_NONE = 0, AUTH_BASIC, AUTH_BEARER };

struct auth_challenge {
        enum auth_scheme scheme;
        char realm[512];
        char service[256];
        char scope[512];
};

/* Parses one WWW-Authenticate header value. Scheme names are case-insensitive; parameters are
 * key=value or key="quoted value" (with \" escapes), separated by commas and optional spaces;
 * unknown parameters are ignored. Bearer requires a realm. 0, -EINVAL or -ENAMETOOLONG.
 * Nothing is written on error. */
int auth_parse_challenge(const char *value, struct auth_challenge *ret);

/* From a docker config.json's text, finds the credentials for REGISTRY ("host[:port]"):
 * auths.<key>.auth (base64 "user:pass") or auths.<key>.username/password, where <key> is
 * REGISTRY, "https://REGISTRY" or "http://REGISTRY" (trailing "/v1/" or "/" tolerated).
 * Writes "user:pass" into OUT. 0, -ENOENT (no entry), -EINVAL (malformed), -ENAMETOOLONG. */
int auth_find_credentials(const char *config_json, const char *registry, char *out, size_t out_len);

/* Extracts the token from a token endpoint's JSON answer: "token", else "access_token".
 * Also reports "expires_in" seconds (60 when absent, as the spec says). 0, -EINVAL,
 * -ENAMETOOLONG. */
int auth_parse_token_response(const char *json, char *out, size_t out_len,
                              unsigned *ret_expires_in);
