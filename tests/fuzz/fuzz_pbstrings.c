/* libFuzzer target for snapshot/pbstrings.c's walk of a request's wire bytes. The first byte
 * picks the request type (Prepare, Update, List, Commit: top-level strings, maps, a message
 * two levels down, repeated strings); the rest is the request. The oracle is protobuf-c: the
 * walk always answers 0, -EILSEQ or -EBADMSG with a WHY that fits and is printable ASCII
 * (never the raw bytes); bytes that protobuf-c unpacks are never -EBADMSG (but for a field
 * number 0, which it lets through in a varint longer than it needs); and when the walk
 * passes them, every string of the unpacked message, walked by its descriptor, is UTF-8: a
 * field the wire walk skipped would show here. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "snapshot/pbstrings.h"
#include "snapshots.pb-c.h"
#include "tests/fuzz/fuzz.h"
#include "util/utf8.h"

static bool string_ok(const char *s) {
        return !s || utf8_valid(s, strlen(s));
}

static bool strings_ok(const ProtobufCMessage *m, unsigned depth) {
        CHECK(depth <= PBSTR_MAX_DEPTH);
        const ProtobufCMessageDescriptor *d = m->descriptor;
        const char *base = (const char *)m;
        for (unsigned i = 0; i < d->n_fields; i++) {
                const ProtobufCFieldDescriptor *f = &d->fields[i];
                if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
                        continue;
                if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
                    *(const uint32_t *)(base + f->quantifier_offset) != f->id)
                        continue;
                size_t n = 1;
                const void *const *v = (const void *const *)(base + f->offset);
                if (f->label == PROTOBUF_C_LABEL_REPEATED) {
                        n = *(const size_t *)(base + f->quantifier_offset);
                        v = *(const void *const *const *)(base + f->offset);
                }
                for (size_t k = 0; k < n; k++) {
                        if (f->type == PROTOBUF_C_TYPE_STRING
                                    ? !string_ok(v[k])
                                    : v[k] && !strings_ok(v[k], depth + 1))
                                return false;
                }
        }
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static const ProtobufCMessageDescriptor *const descs[] = {
                &containerd__services__snapshots__v1__prepare_snapshot_request__descriptor,
                &containerd__services__snapshots__v1__update_snapshot_request__descriptor,
                &containerd__services__snapshots__v1__list_snapshots_request__descriptor,
                &containerd__services__snapshots__v1__commit_snapshot_request__descriptor,
        };
        if (size < 1)
                return 0;
        const ProtobufCMessageDescriptor *d = descs[data[0] % 4];
        data++;
        size--;
        char why[80];
        memset(why, 'z', sizeof(why));
        int r = pbstr_check(d, data, size, why, sizeof(why));
        CHECK(r == 0 || r == -EILSEQ || r == -EBADMSG);
        const char *nul = memchr(why, 0, sizeof(why));
        CHECK(nul);
        CHECK(r != 0 || nul == why);
        for (const char *p = why; p < nul; p++)
                CHECK(*p >= 0x20 && *p < 0x7f);
        ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, size, data);
        if (m) {
                /* protobuf-c's one lapse (pbstrings.h): a field number 0 in a long varint. */
                CHECK(r != -EBADMSG || strncmp(why, "field number 0 ", 15) == 0);
                if (r == 0)
                        CHECK(strings_ok(m, 0));
                protobuf_c_message_free_unpacked(m, NULL);
        }
        return 0;
}
