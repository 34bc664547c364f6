/* Unit tests for util/utf8.c (strict UTF-8) and snapshot/pbstrings.c (the UTF-8 check of a
 * request's string fields, which serve() runs for every snapshotter method).
 *
 * The validator is checked against the boundaries of Unicode's table 3-7, byte by byte: the
 * first and last code point of every encoding length, every overlong form's edge, the
 * surrogates, U+10FFFF and U+110000, and sequences cut short. The request check is run on
 * real requests packed by protobuf-c from containerd's messages (the generated code is in
 * the core library). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "google/protobuf/field_mask.pb-c.h"
#include "snapshot/pbstrings.h"
#include "snapshots.pb-c.h"
#include "util/utf8.h"

#define PB(x) Containerd__Services__Snapshots__V1__##x
#define pb(x) containerd__services__snapshots__v1__##x

/* Whether the string literal S (its bytes, not its NUL) is valid. */
#define VALID(s) utf8_valid((s), sizeof(s) - 1)
#define PREFIX(s) utf8_valid_prefix((s), sizeof(s) - 1)

static void test_valid(void **state) {
        (void)state;
        assert_true(utf8_valid("", 0));
        assert_true(utf8_valid(NULL, 0));
        assert_true(VALID("plain ascii, and a \x7f"));
        assert_true(VALID("\x00"));         /* U+0000 is UTF-8 (pbstrings refuses it separately) */
        assert_true(VALID("\xc2\x80"));     /* U+0080, the first two-byte */
        assert_true(VALID("\xdf\xbf"));     /* U+07FF, the last two-byte */
        assert_true(VALID("\xe0\xa0\x80")); /* U+0800, the first three-byte */
        assert_true(VALID("\xed\x9f\xbf")); /* U+D7FF, just below the surrogates */
        assert_true(VALID("\xee\x80\x80")); /* U+E000, just above them */
        assert_true(VALID("\xef\xbf\xbf")); /* U+FFFF */
        assert_true(VALID("\xf0\x90\x80\x80")); /* U+10000, the first four-byte */
        assert_true(VALID("\xf4\x8f\xbf\xbf")); /* U+10FFFF, the last code point */
        assert_true(VALID("sn\xc3\xa4psh\xc3\xb6t \xe2\x82\xac \xf0\x9f\x90\xb3"));
}

static void test_invalid(void **state) {
        (void)state;
        assert_false(VALID("\x80")); /* a continuation as a lead */
        assert_false(VALID("\xbf"));
        assert_false(VALID("\xc0\x80"));         /* overlong U+0000 */
        assert_false(VALID("\xc1\xbf"));         /* overlong U+007F */
        assert_false(VALID("\xe0\x80\x80"));     /* overlong U+0000, three bytes */
        assert_false(VALID("\xe0\x9f\xbf"));     /* overlong U+07FF */
        assert_false(VALID("\xed\xa0\x80"));     /* U+D800, a surrogate */
        assert_false(VALID("\xed\xbf\xbf"));     /* U+DFFF */
        assert_false(VALID("\xf0\x80\x80\x80")); /* overlong, four bytes */
        assert_false(VALID("\xf0\x8f\xbf\xbf")); /* overlong U+FFFF */
        assert_false(VALID("\xf4\x90\x80\x80")); /* U+110000 */
        assert_false(VALID("\xf5\x80\x80\x80"));
        assert_false(VALID("\xfe"));
        assert_false(VALID("\xff"));
        assert_false(VALID("\xc3")); /* cut short by the end */
        assert_false(VALID("\xe2\x82"));
        assert_false(VALID("\xf0\x9f\x90"));
        assert_false(VALID("\xc3\x28")); /* a continuation that is not */
        assert_false(VALID("\xe2\x28\xac"));
        assert_false(VALID("\xe2\x82\x28"));
        assert_false(VALID("\xf0\x9f\x28\xb3"));
        assert_false(VALID("\xf0\x9f\x90\x28"));
        assert_false(VALID("\xc3\xa4\xc3"));
}

/* The prefix is where the first bad sequence starts, not where the bad byte is. */
static void test_prefix(void **state) {
        (void)state;
        assert_int_equal(PREFIX("abc"), 3);
        assert_int_equal(PREFIX("bad\xff\xfe"), 3);
        assert_int_equal(PREFIX("\xc3\xa4\xe2\x82"), 2);
        assert_int_equal(PREFIX("ab\xf0\x9f\x90\x28"), 2);
        assert_int_equal(PREFIX("\xed\xa0\x80z"), 0);
        /* Never past the end: the lead's length is not trusted. */
        const char lead[] = {'x', (char)0xf0};
        assert_int_equal(utf8_valid_prefix(lead, 1), 1);
        assert_int_equal(utf8_valid_prefix(lead, 2), 1);
}

/* Every two-byte sequence: valid exactly when table 3-7 says so. */
static void test_all_pairs(void **state) {
        (void)state;
        for (int a = 0; a < 256; a++)
                for (int b = 0; b < 256; b++) {
                        uint8_t s[2] = {(uint8_t)a, (uint8_t)b};
                        bool want = (a < 0x80 && b < 0x80) ||
                                    (a >= 0xc2 && a <= 0xdf && b >= 0x80 && b <= 0xbf);
                        assert_int_equal(utf8_valid(s, 2), want);
                }
}

/* Packs MSG into a fresh buffer; *LEN its size. */
static uint8_t *pack(const ProtobufCMessage *msg, size_t *len) {
        *len = protobuf_c_message_get_packed_size(msg);
        uint8_t *buf = malloc(*len ? *len : 1);
        assert_non_null(buf);
        assert_int_equal(protobuf_c_message_pack(msg, buf), *len);
        return buf;
}

static int check(const ProtobufCMessage *msg, char *why, size_t cap) {
        size_t len;
        uint8_t *buf = pack(msg, &len);
        int r = pbstr_check(msg->descriptor, buf, len, why, cap);
        free(buf);
        return r;
}

static void test_request_strings(void **state) {
        (void)state;
        char why[384];
        PB(PrepareSnapshotRequest)
        p = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__INIT;
        p.snapshotter = "p2pblobs";
        p.key = "k\xc3\xa4y";
        p.parent = "";
        assert_int_equal(check(&p.base, why, sizeof(why)), 0);
        assert_string_equal(why, "");

        p.key = "bad\xff\xfe";
        assert_int_equal(check(&p.base, why, sizeof(why)), -EILSEQ);
        assert_string_equal(why, "field key is not UTF-8: \"bad\\xff\\xfe\"");

        /* A map entry: a nested message. */
        PB(PrepareSnapshotRequest__LabelsEntry)
        e = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__LABELS_ENTRY__INIT;
        PB(PrepareSnapshotRequest__LabelsEntry) *ep = &e;
        e.key = "containerd.io/snapshot.ref";
        e.value = "v\xed\xa0\x80"; /* a surrogate */
        p.key = "k";
        p.n_labels = 1;
        p.labels = &ep;
        assert_int_equal(check(&p.base, why, sizeof(why)), -EILSEQ);
        assert_string_equal(why, "field labels.value is not UTF-8: \"v\\xed\\xa0\\x80\"");
        e.value = "v";
        assert_int_equal(check(&p.base, why, sizeof(why)), 0);

        /* Two levels down, and a repeated string. */
        PB(UpdateSnapshotRequest)
        u = CONTAINERD__SERVICES__SNAPSHOTS__V1__UPDATE_SNAPSHOT_REQUEST__INIT;
        PB(Info) info = CONTAINERD__SERVICES__SNAPSHOTS__V1__INFO__INIT;
        PB(Info__LabelsEntry) ie = CONTAINERD__SERVICES__SNAPSHOTS__V1__INFO__LABELS_ENTRY__INIT;
        PB(Info__LabelsEntry) *iep = &ie;
        Google__Protobuf__FieldMask mask = GOOGLE__PROTOBUF__FIELD_MASK__INIT;
        char *paths[] = {"labels.a", "labels.\xc0\xaf"};
        ie.key = "a";
        ie.value = "\xf4\x90\x80\x80";
        info.name = "base";
        info.n_labels = 1;
        info.labels = &iep;
        u.info = &info;
        u.update_mask = &mask;
        mask.n_paths = 2;
        mask.paths = paths;
        assert_int_equal(check(&u.base, why, sizeof(why)), -EILSEQ);
        assert_string_equal(why, "field info.labels.value is not UTF-8: \"\\xf4\\x90\\x80\\x80\"");
        ie.value = "1";
        assert_int_equal(check(&u.base, why, sizeof(why)), -EILSEQ);
        assert_string_equal(why, "field update_mask.paths is not UTF-8: \"labels.\\xc0\\xaf\"");
        paths[1] = "labels.b";
        assert_int_equal(check(&u.base, why, sizeof(why)), 0);

        /* A long value is shown cut, and WHY always fits. */
        char longkey[200];
        memset(longkey, 'x', sizeof(longkey) - 2);
        longkey[sizeof(longkey) - 2] = (char)0xff;
        longkey[sizeof(longkey) - 1] = '\0';
        p.n_labels = 0;
        p.key = longkey;
        assert_int_equal(check(&p.base, why, sizeof(why)), -EILSEQ);
        assert_non_null(strstr(why, "xxx\"..."));
        char small[16];
        assert_int_equal(check(&p.base, small, sizeof(small)), -EILSEQ);
        assert_int_equal(strlen(small), sizeof(small) - 1);
}

/* What protobuf-c's unpack cannot show: a NUL inside a string (the C string would end there,
 * "k\0\xff" unpacking as "k"). Bytes built by hand: field 2 (key), length 3. */
static void test_nul_and_wire(void **state) {
        (void)state;
        const ProtobufCMessageDescriptor *d = &pb(prepare_snapshot_request__descriptor);
        char why[384];
        static const uint8_t nul[] = {0x12, 3, 'k', 0, 'y'};
        assert_int_equal(pbstr_check(d, nul, sizeof(nul), why, sizeof(why)), -EILSEQ);
        assert_string_equal(why, "field key holds a NUL byte: \"k\\x00y\"");
        static const uint8_t nulbad[] = {0x12, 3, 'k', 0, 0xff};
        assert_int_equal(pbstr_check(d, nulbad, sizeof(nulbad), why, sizeof(why)), -EILSEQ);
        assert_string_equal(why, "field key is not UTF-8: \"k\\x00\\xff\"");
        /* Unknown fields are skipped, whatever their bytes; a varint, fixed64 and fixed32 too. */
        static const uint8_t unknown[] = {0x7a, 2, 0xff, 0xfe, 0x78, 0x96, 0x01, 0x79, 1, 2, 3,
                                          4,    5, 6,    7,    8,    0x7d, 1,    2,    3, 4};
        assert_int_equal(pbstr_check(d, unknown, sizeof(unknown), why, sizeof(why)), 0);
        /* Not a message: a length past the end, a group, field 0, a varint that never ends. */
        static const uint8_t past[] = {0x12, 9, 'k'};
        assert_int_equal(pbstr_check(d, past, sizeof(past), why, sizeof(why)), -EBADMSG);
        static const uint8_t group[] = {0x13};
        assert_int_equal(pbstr_check(d, group, sizeof(group), why, sizeof(why)), -EBADMSG);
        static const uint8_t zero[] = {0x02, 0};
        assert_int_equal(pbstr_check(d, zero, sizeof(zero), why, sizeof(why)), -EBADMSG);
        assert_string_equal(why, "field number 0 in the request");
        /* The same in a varint longer than it needs: protobuf-c unpacks it (an unknown field),
         * the walk does not. */
        static const uint8_t zero2[] = {0x82, 0x00, 0x01, 0x0a};
        ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, sizeof(zero2), zero2);
        assert_non_null(m);
        protobuf_c_message_free_unpacked(m, NULL);
        assert_int_equal(pbstr_check(d, zero2, sizeof(zero2), why, sizeof(why)), -EBADMSG);
        assert_string_equal(why, "field number 0 in the request");
        static const uint8_t endless[] = {0x78, 0xff, 0xff};
        assert_int_equal(pbstr_check(d, endless, sizeof(endless), why, sizeof(why)), -EBADMSG);
        assert_int_equal(pbstr_check(d, NULL, 0, why, sizeof(why)), 0);
        /* A map entry whose bytes do not parse inside a message that does. */
        static const uint8_t entry[] = {0x22, 2, 0x0a, 5};
        assert_int_equal(pbstr_check(d, entry, sizeof(entry), why, sizeof(why)), -EBADMSG);
        assert_string_equal(why, "bad field 1 in labels");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_valid),           cmocka_unit_test(test_invalid),
                cmocka_unit_test(test_prefix),          cmocka_unit_test(test_all_pairs),
                cmocka_unit_test(test_request_strings), cmocka_unit_test(test_nul_and_wire),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
