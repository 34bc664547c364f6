/* containerd filters for snapshots. See filter.h for the syntax.
 *
 * A hand-written scanner over the text, bounded: at most MAX_SELECTORS selectors of at most
 * MAX_FIELDS fields each; the text itself is bounded by the request size. "~=" compiles the
 * value as a POSIX extended regular expression (containerd uses Go's RE2; the patterns
 * containerd's clients send, anchors and classes, mean the same in both). */
#include "snapshot/filter.h"

#include <errno.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SELECTORS 32
/* glibc's regcomp copies the tree of a repeated operand once per repetition operator, so nested
 * repeats ("a++++...", "(a{100}){100}") grow its memory exponentially: found by fuzz_snapfilter
 * at 2.4 GB for a 200-byte pattern. A filter's regexps are short: keep them small and few. */
#define MAX_RE_LEN 256
#define MAX_RE_REPEATS 8
#define STR_(x) #x
#define STR(x) STR_(x)
#define MAX_FIELDS 4

enum op { OP_PRESENT, OP_EQ, OP_NE, OP_RE };

struct selector {
        char *fields[MAX_FIELDS];
        size_t nfields;
        enum op op;
        char *value;
        regex_t re;
        bool has_re;
};

struct snap_filter {
        struct selector sel[MAX_SELECTORS];
        size_t nsel;
};

void snapfilter_free(struct snap_filter *f) {
        if (!f)
                return;
        for (size_t i = 0; i < f->nsel; i++) {
                struct selector *s = &f->sel[i];
                for (size_t j = 0; j < s->nfields; j++)
                        free(s->fields[j]);
                free(s->value);
                if (s->has_re)
                        regfree(&s->re);
        }
        free(f);
}

struct scan {
        const char *p;
        const char *err;
};

static void skip_space(struct scan *sc) {
        while (*sc->p == ' ' || *sc->p == '\t' || *sc->p == '\n' || *sc->p == '\r')
                sc->p++;
}

static bool is_field_char(char c) {
        return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c >= '0' && c <= '9');
}

/* A quoted string at sc->p (opening quote included); the unescaped text, or NULL. */
static char *scan_quoted(struct scan *sc) {
        char q = *sc->p++;
        size_t cap = strlen(sc->p) + 1, n = 0;
        char *out = malloc(cap);
        if (!out) {
                sc->err = "out of memory";
                return NULL;
        }
        for (;;) {
                char c = *sc->p;
                if (c == '\0') {
                        sc->err = "unterminated quoted string";
                        free(out);
                        return NULL;
                }
                sc->p++;
                if (c == q)
                        break;
                if (c == '\\' && q != '`') {
                        char e = *sc->p;
                        if (e == '\0')
                                continue;
                        sc->p++;
                        switch (e) {
                        case 'n':
                                c = '\n';
                                break;
                        case 't':
                                c = '\t';
                                break;
                        case 'r':
                                c = '\r';
                                break;
                        default:
                                /* a regexp keeps its escapes: /a\.b/ means a\.b */
                                if (q == '/' && e != '/')
                                        out[n++] = '\\';
                                c = e;
                        }
                }
                out[n++] = c;
        }
        out[n] = '\0';
        return out;
}

static char *scan_field(struct scan *sc) {
        if (*sc->p == '"' || *sc->p == '`' || *sc->p == '/')
                return scan_quoted(sc);
        const char *start = sc->p;
        while (is_field_char(*sc->p))
                sc->p++;
        if (sc->p == start) {
                sc->err = "expected a field name";
                return NULL;
        }
        char *f = strndup(start, (size_t)(sc->p - start));
        if (!f)
                sc->err = "out of memory";
        return f;
}

static char *scan_value(struct scan *sc) {
        if (*sc->p == '"' || *sc->p == '`' || *sc->p == '/')
                return scan_quoted(sc);
        const char *start = sc->p;
        while (*sc->p && *sc->p != ',' && *sc->p != ' ' && *sc->p != '\t' && *sc->p != '\n' &&
               *sc->p != '\r')
                sc->p++;
        if (sc->p == start) {
                sc->err = "expected a value";
                return NULL;
        }
        char *v = strndup(start, (size_t)(sc->p - start));
        if (!v)
                sc->err = "out of memory";
        return v;
}

/* Whether PATTERN is small enough for regcomp's memory to stay bounded (see MAX_RE_LEN). An
 * escaped operator is a literal and does not count. */
static bool regex_bounded(const char *pattern) {
        size_t len = strlen(pattern);
        if (len > MAX_RE_LEN)
                return false;
        unsigned repeats = 0;
        for (size_t i = 0; i < len; i++) {
                if (pattern[i] == '\\') {
                        i++;
                        continue;
                }
                if (pattern[i] == '{')
                        return false;
                if ((pattern[i] == '*' || pattern[i] == '+' || pattern[i] == '?') &&
                    ++repeats > MAX_RE_REPEATS)
                        return false;
        }
        return true;
}

static int parse_selector(struct scan *sc, struct selector *s) {
        skip_space(sc);
        for (;;) {
                if (s->nfields == MAX_FIELDS) {
                        sc->err = "field path too long";
                        return -EINVAL;
                }
                char *f = scan_field(sc);
                if (!f)
                        return -EINVAL;
                s->fields[s->nfields++] = f;
                if (*sc->p != '.')
                        break;
                sc->p++;
        }
        skip_space(sc);
        if (*sc->p == '\0' || *sc->p == ',') {
                s->op = OP_PRESENT;
                return 0;
        }
        if (sc->p[1] != '=' || (sc->p[0] != '=' && sc->p[0] != '!' && sc->p[0] != '~')) {
                sc->err = "expected an operator (==, !=, ~=)";
                return -EINVAL;
        }
        s->op = sc->p[0] == '=' ? OP_EQ : sc->p[0] == '!' ? OP_NE : OP_RE;
        sc->p += 2;
        skip_space(sc);
        s->value = scan_value(sc);
        if (!s->value)
                return -EINVAL;
        if (s->op == OP_RE) {
                if (!regex_bounded(s->value)) {
                        sc->err = "regular expression too complex (at most " STR(
                                MAX_RE_LEN) " bytes and " STR(MAX_RE_REPEATS) " of * + ?; no "
                                                                              "{n,m})";
                        return -EINVAL;
                }
                if (regcomp(&s->re, s->value, REG_EXTENDED | REG_NOSUB) != 0) {
                        sc->err = "invalid regular expression";
                        return -EINVAL;
                }
                s->has_re = true;
        }
        skip_space(sc);
        return 0;
}

int snapfilter_parse(const char *text, struct snap_filter **ret, const char **ret_err) {
        struct snap_filter *f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        struct scan sc = {.p = text};
        int r = 0;
        for (;;) {
                if (f->nsel == MAX_SELECTORS) {
                        sc.err = "too many selectors";
                        r = -EINVAL;
                        break;
                }
                r = parse_selector(&sc, &f->sel[f->nsel++]);
                if (r < 0)
                        break;
                if (*sc.p == '\0')
                        break;
                if (*sc.p != ',') {
                        sc.err = "expected ',' between selectors";
                        r = -EINVAL;
                        break;
                }
                sc.p++;
        }
        if (r < 0) {
                if (ret_err)
                        *ret_err = sc.err ? sc.err : "invalid filter";
                snapfilter_free(f);
                return -EINVAL;
        }
        *ret = f;
        return 0;
}

static const char *kind_name(enum snap_kind k) {
        switch (k) {
        case SNAP_VIEW:
                return "view";
        case SNAP_ACTIVE:
                return "active";
        case SNAP_COMMITTED:
                return "committed";
        }
        return "unknown";
}

/* The value of field path S in INFO, or NULL when it is not present. As containerd's bolt
 * storage adapts a snapshot: name, parent and kind are always present (their first path
 * element decides, even when empty); a label is present when its key exists. */
static const char *field_value(const struct selector *s, const struct snap_info *info) {
        const char *f = s->fields[0];
        if (strcmp(f, "name") == 0)
                return info->key;
        if (strcmp(f, "parent") == 0)
                return info->parent;
        if (strcmp(f, "kind") == 0)
                return kind_name(info->kind);
        if (strcmp(f, "labels") != 0 || s->nfields < 2)
                return NULL;
        /* An unquoted dotted key ("labels.a.b") is the key "a.b", as in containerd. */
        char key[1024];
        size_t n = 0;
        for (size_t i = 1; i < s->nfields; i++) {
                size_t l = strlen(s->fields[i]);
                if (n + l + 2 > sizeof(key))
                        return NULL;
                if (i > 1)
                        key[n++] = '.';
                memcpy(key + n, s->fields[i], l);
                n += l;
        }
        key[n] = '\0';
        for (size_t i = 0; i < info->nlabels; i++)
                if (strcmp(info->labels[i].name, key) == 0)
                        return info->labels[i].value;
        return NULL;
}

bool snapfilter_match(const struct snap_filter *f, const struct snap_info *info) {
        for (size_t i = 0; i < f->nsel; i++) {
                const struct selector *s = &f->sel[i];
                const char *v = field_value(s, info);
                bool present = v != NULL;
                bool ok;
                switch (s->op) {
                case OP_PRESENT:
                        ok = present;
                        break;
                case OP_EQ:
                        ok = present && strcmp(v, s->value) == 0;
                        break;
                case OP_NE:
                        ok = strcmp(v ? v : "", s->value) != 0;
                        break;
                case OP_RE:
                        ok = regexec(&s->re, v ? v : "", 0, NULL, 0) == 0;
                        break;
                default:
                        ok = false;
                }
                if (!ok)
                        return false;
        }
        return true;
}
