/* The check protobuf-c does not make: that every proto3 `string` of a request holds UTF-8.
 *
 * protobuf-c copies a string's bytes as they came, so a request whose key or label is not
 * UTF-8 was stored, and every List after it answered with a message that Python's, C++'s and
 * Go's (google.golang.org/protobuf, containerd 2.x) protobuf refuse to decode. The check walks
 * the request's wire bytes by its descriptor, not the unpacked message: there a string is a C
 * string, cut at its first NUL byte, so "k\0\xff" would pass as "k" (and be stored as "k"). A
 * NUL is refused too, for that reason: it is valid UTF-8, but no C string here can hold it.
 *
 * Used by snapshot/snapshotter.c's serve(), for every method, after protobuf-c has unpacked
 * the request (so the bytes are a message of that type). */
#pragma once
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

/* Nested messages followed before the request is called malformed (containerd's are 3 deep). */
#define PBSTR_MAX_DEPTH 16

/* Checks every string field of the message of type DESC encoded in the LEN bytes at BUF,
 * those of nested messages and map entries included (unknown fields are skipped, as unpack
 * skips them). 0 when each is UTF-8 (util/utf8.h) without a NUL byte. -EILSEQ when one is
 * not: WHY (CAP bytes, NUL-terminated) then names it by its path of field names
 * ("labels.value") and shows its first bytes escaped (log_escape: never the raw bytes).
 * -EBADMSG when the bytes are not a message (WHY says where): protobuf-c refuses those too,
 * but for a field number 0 written as a varint longer than it needs ("\x82\x00"), which it
 * takes for an unknown field. Pure; reads only BUF. */
int pbstr_check(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len, char *why,
                size_t cap);
