/* Strict UTF-8 (RFC 3629, Unicode's table 3-7): what a proto3 `string` must hold, and what
 * every protobuf library but protobuf-c checks when it decodes one.
 *
 * Refused: bytes 0x80-0xBF as a lead, 0xC0, 0xC1 and 0xF5-0xFF anywhere, a sequence cut short
 * by its end or by a byte that is not a continuation, overlong forms (a code point encoded in
 * more bytes than it needs), UTF-16 surrogates (U+D800-U+DFFF) and code points above
 * U+10FFFF. U+0000 is valid UTF-8; callers that keep C strings refuse it themselves. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

/* The length of the longest prefix of the LEN bytes at S that is whole, valid UTF-8: LEN
 * when they all are, else the offset of the sequence that is not. Pure; never reads past
 * S + LEN. */
size_t utf8_valid_prefix(const void *s, size_t len);

/* Whether the LEN bytes at S are valid UTF-8. */
bool utf8_valid(const void *s, size_t len);
