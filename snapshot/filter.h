/* containerd's filter syntax (github.com/containerd/containerd/filters), for List.
 *
 *   filter   := selector ( "," selector )*          every selector must match
 *   selector := fieldpath [ ( "==" | "!=" | "~=" ) value ]
 *   fieldpath:= field ( "." field )*                field: [A-Za-z0-9_]+ or a quoted string
 *   value    := a quoted string or a run of characters other than "," and space
 * Quoted strings take "...", `...` or /.../ with backslash escapes. A selector without an
 * operator asks for presence. The fields of a snapshot are name, parent, kind ("view",
 * "active", "committed") and labels.<key>, as containerd's snapshot adaptor defines them.
 * A request's several filters are alternatives: the service matches any of them. */
#pragma once
#include <stdbool.h>

#include "index/snapshots.h"

struct snap_filter;

/* Parses TEXT. 0, -EINVAL (syntax; with RET_ERR set to a static description), -ENOMEM. */
int snapfilter_parse(const char *text, struct snap_filter **ret, const char **ret_err);
void snapfilter_free(struct snap_filter *f); /* NULL-safe */
bool snapfilter_match(const struct snap_filter *f, const struct snap_info *info);
