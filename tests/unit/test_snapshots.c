/* Unit tests for index/snapshots.c (the snapshotter's metadata: containerd's rules and the
 * order of its errors) and snapshot/filter.c (containerd's filter syntax, with the cases of
 * containerd's own Walk conformance test). A real index.db in a temporary directory. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "index/index.h"
#include "index/snapshots.h"
#include "snapshot/filter.h"
#include "snapshot/lazy.h"

struct fixture {
        char dir[64];
        char db[128];
        struct index *ix;
        struct snapdb *sdb;
};

static int setup(void **state) {
        struct fixture *f = calloc(1, sizeof(*f));
        if (!f)
                return -1;
        snprintf(f->dir, sizeof(f->dir), "/tmp/p2pblobs-test-snap-XXXXXX");
        if (!mkdtemp(f->dir))
                return -1;
        snprintf(f->db, sizeof(f->db), "%s/index.db", f->dir);
        if (idx_open(f->db, &f->ix) < 0 || snapdb_open(f->db, &f->sdb) < 0)
                return -1;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fixture *f = *state;
        snapdb_close(f->sdb);
        idx_close(f->ix);
        char p[192];
        const char *suffix[] = {"", "-wal", "-shm"};
        for (int i = 0; i < 3; i++) {
                snprintf(p, sizeof(p), "%s%s", f->db, suffix[i]);
                unlink(p);
        }
        rmdir(f->dir);
        free(f);
        return 0;
}

static int create(struct snapdb *db, enum snap_kind kind, const char *key, const char *parent,
                  const struct snap_label *l, size_t nl, int64_t *ret_id, size_t *ret_nparents) {
        struct snap_info *info;
        int64_t *parents;
        size_t n;
        int r = snapdb_create(db, kind, key, parent, l, nl, &info, &parents, &n);
        if (r == 0) {
                if (ret_id)
                        *ret_id = info->id;
                if (ret_nparents)
                        *ret_nparents = n;
                snap_info_free(info);
                free(parents);
        }
        return r;
}

static void test_lifecycle_and_errors(void **state) {
        struct fixture *f = *state;
        struct snapdb *db = f->sdb;
        struct snap_label l[] = {{"a", "1"}, {"empty", ""}};
        int64_t id, cid, id2;
        size_t np;

        assert_int_equal(create(db, SNAP_ACTIVE, "base-tmp", "", l, 2, &id, &np), 0);
        assert_int_equal(np, 0);
        assert_int_equal(create(db, SNAP_ACTIVE, "base-tmp", "", NULL, 0, NULL, NULL), -EEXIST);
        /* A parent that is missing, or not committed. */
        assert_int_equal(create(db, SNAP_ACTIVE, "x", "nope", NULL, 0, NULL, NULL), -ENOENT);
        assert_int_equal(create(db, SNAP_ACTIVE, "x", "base-tmp", NULL, 0, NULL, NULL), -EINVAL);
        /* Commit of a missing key; then the real one, which keeps the id and drops labels. */
        assert_int_equal(snapdb_commit(db, "base", "missing", NULL, 0, 0, 0), -ENOENT);
        assert_int_equal(snapdb_commit(db, "base", "base-tmp", NULL, 0, 10, 2), 0);
        struct snap_info *info;
        assert_int_equal(snapdb_get(db, "base-tmp", &info, NULL, NULL), -ENOENT);
        assert_int_equal(snapdb_get(db, "base", &info, NULL, NULL), 0);
        assert_int_equal(info->id, id);
        assert_int_equal(info->kind, SNAP_COMMITTED);
        assert_int_equal(info->nlabels, 0);
        assert_int_equal(info->usage_size, 10);
        assert_int_equal(info->created_ns, info->updated_ns);
        snap_info_free(info);

        assert_int_equal(create(db, SNAP_ACTIVE, "child", "base", l, 2, &cid, &np), 0);
        assert_int_equal(np, 1);
        assert_int_equal(create(db, SNAP_VIEW, "view", "base", NULL, 0, NULL, NULL), 0);
        /* A taken name is reported before anything about the key (containerd's order). */
        assert_int_equal(snapdb_commit(db, "base", "missing", NULL, 0, 0, 0), -EEXIST);
        assert_int_equal(snapdb_commit(db, "v2", "view", NULL, 0, 0, 0), -EBUSY);
        assert_int_equal(snapdb_remove(db, "base", &id2), -EBUSY);
        assert_int_equal(snapdb_remove(db, "missing", &id2), -ENOENT);

        /* Labels: the empty one was dropped; update paths as containerd's UpdateInfo. */
        int64_t *parents;
        assert_int_equal(snapdb_get(db, "child", &info, &parents, &np), 0);
        assert_int_equal(np, 1);
        assert_int_equal(parents[0], id);
        assert_string_equal(info->parent, "base");
        assert_int_equal(info->nlabels, 1);
        assert_string_equal(info->labels[0].name, "a");
        snap_info_free(info);
        free(parents);
        struct snap_label u[] = {{"a", "2"}, {"b", "3"}};
        char *paths[] = {"labels.b", "labels.gone"};
        assert_int_equal(snapdb_update(db, "child", u, 2, paths, 2, &info), 0);
        assert_int_equal(info->nlabels, 2); /* a kept, b set */
        assert_string_equal(info->labels[0].value, "1");
        assert_string_equal(info->labels[1].value, "3");
        assert_true(info->updated_ns > info->created_ns);
        snap_info_free(info);
        char *bad[] = {"parent"};
        assert_int_equal(snapdb_update(db, "child", u, 2, bad, 1, &info), -EINVAL);
        assert_int_equal(snapdb_update(db, "missing", u, 2, NULL, 0, &info), -ENOENT);
        assert_int_equal(snapdb_update(db, "child", u, 1, NULL, 0, &info), 0);
        assert_int_equal(info->nlabels, 1);
        assert_string_equal(info->labels[0].value, "2");
        snap_info_free(info);

        assert_int_equal(snapdb_remove(db, "child", &id2), 0);
        assert_int_equal(id2, cid);
        assert_int_equal(snapdb_remove(db, "view", &id2), 0);
        assert_int_equal(snapdb_remove(db, "base", &id2), 0);
        /* Ids are never reused: a directory left behind is never adopted. */
        int64_t nid;
        assert_int_equal(create(db, SNAP_ACTIVE, "again", "", NULL, 0, &nid, NULL), 0);
        assert_true(nid > cid);
}

static void test_survives_reopen(void **state) {
        struct fixture *f = *state;
        assert_int_equal(create(f->sdb, SNAP_ACTIVE, "k", "", NULL, 0, NULL, NULL), 0);
        snapdb_close(f->sdb);
        idx_close(f->ix);
        assert_int_equal(idx_open(f->db, &f->ix), 0);
        assert_int_equal(snapdb_open(f->db, &f->sdb), 0);
        struct snap_info *info;
        assert_int_equal(snapdb_get(f->sdb, "k", &info, NULL, NULL), 0);
        assert_int_equal(info->kind, SNAP_ACTIVE);
        snap_info_free(info);
}

/* A remote snapshot: committed in one transaction with its layer, listed with it, a child's
 * chain names it, it survives a reopen, and its row goes with it. */
static void test_remote(void **state) {
        struct fixture *f = *state;
        static const char layer[] =
                "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        struct snap_label l[] = {{LAZY_LABEL_TARGET, "sha256:chain1"},
                                 {LAZY_LABEL_REMOTE, "remote snapshot"}};
        int64_t id, cid;
        assert_int_equal(create(f->sdb, SNAP_ACTIVE, "extract-1", "", l, 1, &id, NULL), 0);
        assert_int_equal(
                snapdb_commit_remote(f->sdb, "sha256:chain1", "extract-1", l, 2, "", "r/x@y"),
                -EINVAL);
        assert_int_equal(snapdb_commit_remote(f->sdb, "sha256:chain1", "extract-1", l, 2, layer,
                                              "reg:5000/img@sha256:11"),
                         0);
        /* The same target again: taken (the snapshotter then drops its active snapshot). */
        assert_int_equal(create(f->sdb, SNAP_ACTIVE, "extract-2", "", l, 1, NULL, NULL), 0);
        assert_int_equal(snapdb_commit_remote(f->sdb, "sha256:chain1", "extract-2", l, 2, layer,
                                              "reg:5000/img@sha256:11"),
                         -EEXIST);
        char buf[80];
        assert_int_equal(snapdb_remote_layer(f->sdb, id, buf, sizeof(buf)), 0);
        assert_string_equal(buf, layer);
        assert_int_equal(create(f->sdb, SNAP_ACTIVE, "c", "sha256:chain1", NULL, 0, &cid, NULL), 0);
        assert_int_equal(snapdb_remote_layer(f->sdb, cid, buf, sizeof(buf)), 0);
        assert_string_equal(buf, "");
        assert_int_equal(snapdb_remote_layer(f->sdb, id, buf, 10), -ENAMETOOLONG);

        snapdb_close(f->sdb);
        idx_close(f->ix);
        assert_int_equal(idx_open(f->db, &f->ix), 0);
        assert_int_equal(snapdb_open(f->db, &f->sdb), 0);
        struct snap_info *info;
        assert_int_equal(snapdb_get(f->sdb, "sha256:chain1", &info, NULL, NULL), 0);
        assert_int_equal(info->kind, SNAP_COMMITTED);
        assert_int_equal(info->id, id);
        assert_string_equal(info->remote_layer, layer);
        assert_string_equal(info->remote_ref, "reg:5000/img@sha256:11");
        assert_int_equal(info->nlabels, 2);
        snap_info_free(info);
        assert_int_equal(snapdb_get(f->sdb, "c", &info, NULL, NULL), 0);
        assert_string_equal(info->remote_layer, "");
        snap_info_free(info);

        int64_t rid;
        assert_int_equal(snapdb_remove(f->sdb, "c", &rid), 0);
        assert_int_equal(snapdb_remove(f->sdb, "sha256:chain1", &rid), 0);
        assert_int_equal(snapdb_remote_layer(f->sdb, id, buf, sizeof(buf)), 0);
        assert_string_equal(buf, "");
}

#define HEX64 "abababababababababababababababababababababababababababababababab"

static void test_lazy_labels(void **state) {
        (void)state;
        struct lazy_layer lz;
        struct snap_label cri[] = {
                {LAZY_LABEL_TARGET, "sha256:chain"},
                {"containerd.io/snapshot/cri.image-ref", "127.0.0.1:5000/snap/img:v1"},
                {"containerd.io/snapshot/cri.layer-digest", "sha256:" HEX64},
                {"containerd.io/snapshot/cri.image-layers", "sha256:" HEX64},
        };
        assert_int_equal(lazy_parse(cri, 4, &lz), 0);
        assert_string_equal(lz.target, "sha256:chain");
        assert_string_equal(lz.ref, "127.0.0.1:5000/snap/img@sha256:" HEX64);
        assert_string_equal(lz.layer, "sha256:" HEX64);
        assert_false(lz.has_toc);
        /* No target, or no layer labels: not a layer Prepare. */
        assert_int_equal(lazy_parse(cri + 1, 3, &lz), -ENOENT);
        assert_int_equal(lazy_parse(cri, 2, &lz), -ENOENT);

        struct snap_label sgz[] = {
                {LAZY_LABEL_TARGET, "sha256:chain"},
                {"containerd.io/snapshot/remote/stargz.reference",
                 "reg.example:443/a/b/c@sha256:" HEX64},
                {"containerd.io/snapshot/remote/stargz.digest", "sha256:" HEX64},
                {"containerd.io/snapshot/stargz/toc.digest", "sha256:" HEX64},
        };
        assert_int_equal(lazy_parse(sgz, 4, &lz), 0);
        assert_string_equal(lz.ref, "reg.example:443/a/b/c@sha256:" HEX64);
        assert_true(lz.has_toc);

        /* Malformed: falls back, never an error the pull sees. */
        struct snap_label bad[] = {
                {LAZY_LABEL_TARGET, "sha256:chain"},
                {"containerd.io/snapshot/cri.image-ref", "busybox:latest"},
                {"containerd.io/snapshot/cri.layer-digest", "sha256:" HEX64},
        };
        assert_int_equal(lazy_parse(bad, 3, &lz), -EINVAL);
        bad[1].value = "reg/UPPER:tag";
        assert_int_equal(lazy_parse(bad, 3, &lz), -EINVAL);
        bad[1].value = "reg/ok:tag";
        bad[2].value = "md5:abc";
        assert_int_equal(lazy_parse(bad, 3, &lz), -EINVAL);

        char out[64];
        assert_int_equal(lazy_image_repository("h:5000/r", out, sizeof(out)), 0);
        assert_string_equal(out, "h:5000/r");
        assert_int_equal(lazy_image_repository("h:5000/r/s:t@sha256:" HEX64, out, sizeof(out)), 0);
        assert_string_equal(out, "h:5000/r/s");
        assert_int_equal(lazy_image_repository("h/r", out, 3), -ENAMETOOLONG);
        assert_int_equal(lazy_image_repository("/r", out, sizeof(out)), -EINVAL);
}

static bool match(const char *filter, const struct snap_info *info) {
        struct snap_filter *fl;
        const char *err;
        assert_int_equal(snapfilter_parse(filter, &fl, &err), 0);
        bool m = snapfilter_match(fl, info);
        snapfilter_free(fl);
        return m;
}

static void test_filters(void **state) {
        (void)state;
        struct snap_label l[] = {{"containerd.io/gc.root", "check-walk"}, {"l", "2"}};
        struct snap_info a = {
                .key = "a-wl", .parent = "p-wl", .kind = SNAP_ACTIVE, .nlabels = 2, .labels = l};
        struct snap_info p = {.key = "p", .parent = "", .kind = SNAP_COMMITTED};
        assert_true(match("labels.\"containerd.io/gc.root\"==check-walk", &a));
        assert_false(match("labels.\"containerd.io/gc.root\"==check-walk", &p));
        assert_true(match("kind==active,labels.\"containerd.io/gc.root\"==check-walk", &a));
        assert_false(match("kind==view,labels.\"containerd.io/gc.root\"==check-walk", &a));
        assert_true(match("name==a-wl,labels.l", &a));
        assert_false(match("labels.l", &p));
        assert_true(match("labels.l==2", &a));
        assert_true(match("parent!=\"\"", &a));
        assert_false(match("parent!=\"\"", &p));
        assert_true(match("name==p", &p));
        assert_true(match("name~=/^a-/", &a));
        assert_false(match("name~=\"^a-\"", &p));
        assert_true(match(" kind == committed ", &p));

        /* The filter containerd's metadata walks with after a remote snapshot's ALREADY_EXISTS
         * (metadata/snapshot.go): an unquoted chain id, a quoted (maybe empty) parent. */
        struct snap_label rl[] = {{"containerd.io/snapshot.ref", "sha256:0123abc"}};
        struct snap_info r = {.key = "sha256:0123abc",
                              .parent = "",
                              .kind = SNAP_COMMITTED,
                              .nlabels = 1,
                              .labels = rl};
        assert_true(
                match("labels.\"containerd.io/snapshot.ref\"==sha256:0123abc,parent==\"\"", &r));
        assert_false(
                match("labels.\"containerd.io/snapshot.ref\"==sha256:0123abc,parent==\"x\"", &r));
        assert_false(
                match("labels.\"containerd.io/snapshot.ref\"==sha256:0123abd,parent==\"\"", &r));

        /* A regexp that would make regcomp's memory explode is refused: nested repeats. */
        assert_true(match("name~=/^a-?b*c+$|a-/", &a)); /* a few repeats are fine */
        const char *bad[] = {
                "",         "kind==",      "kind=active",        "labels.\"x",           ",",
                "name==a,", "name~=\"(\"", "name~=/a+++++++++/", "name~=/(a{100}){100}/"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct snap_filter *fl;
                const char *err = NULL;
                assert_int_equal(snapfilter_parse(bad[i], &fl, &err), -EINVAL);
                assert_non_null(err);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_lifecycle_and_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_survives_reopen, setup, teardown),
                cmocka_unit_test(test_filters),
                cmocka_unit_test_setup_teardown(test_remote, setup, teardown),
                cmocka_unit_test(test_lazy_labels),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
