# p2pblobs build. `make check` is what CI runs; `make demo` shows it working on one machine.
#
# Layout: util/ cache/ index/ net/ registry/ peer/ control/ engine/ layer/ layertree/ snapshot/ build
# libp2pblobs-core.a, compiled without FUSE's include flags (so "no FUSE in the core" is the
# compiler's rule, not a convention); fs/ links FUSE into p2pblobsd; tools/ is blobctl.
#
# Configurations (each in its own build directory):
#   make                      release: -O2, _FORTIFY_SOURCE, stack protector  -> build/release
#   make SANITIZE=1           ASan + UBSan, the build the tests run against   -> build/asan
#   make CC=clang             the release flags with clang                    -> build/clang
# Warnings are errors only with WERROR=1 (make check and CI set it): a user's newer compiler
# with a new warning still builds.

CC       ?= cc
FUSE_PKGS = fuse3
CORE_PKGS = libcurl libmicrohttpd jansson inih libcrypto sqlite3 libnl-3.0 libnl-route-3.0 zlib libzstd \
            libnghttp2 libprotobuf-c
PKGS      = $(FUSE_PKGS) $(CORE_PKGS) libsystemd

WARN     = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
           -Wvla -Wpointer-arith -Wcast-align -Wundef -Wnull-dereference
ifeq ($(WERROR),1)
WARN    += -Werror
endif
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 $(WARN) -g -pthread \
              -I. -I$(GEN) -MMD -MP

ifeq ($(SANITIZE),1)
BUILD   ?= build/asan
# P2PBLOBS_DEBUG_LOCKS: the engine lock records its holder and ASSERT_HELD checks it.
OPT      = -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
           -DP2PBLOBS_DEBUG_LOCKS
else ifneq ($(filter clang%,$(notdir $(CC))),)
BUILD   ?= build/clang
OPT      = -O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2
else
BUILD   ?= build/release
OPT      = -O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2
endif

CORE_CFLAGS := $(shell pkg-config --cflags $(CORE_PKGS) 2>/dev/null)
PKG_CFLAGS  := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CORE_LIBS   := $(shell pkg-config --libs $(CORE_PKGS) 2>/dev/null)
# The core's objects see only the core's include paths; fs/ sees FUSE's too.
CFLAGS_CORE = $(CFLAGS_BASE) $(OPT) $(CORE_CFLAGS) $(CFLAGS)
CFLAGS_ALL  = $(CFLAGS_BASE) $(OPT) $(PKG_CFLAGS) $(CFLAGS)
# --as-needed: each program records only the libraries its objects call (blobctl: no FUSE,
# no libsystemd).
LDLIBS_ALL  = $(OPT) -pthread -Wl,--as-needed $(PKG_LIBS) $(LDFLAGS)
LDLIBS_CORE = $(OPT) -pthread -Wl,--as-needed $(CORE_LIBS) $(LDFLAGS)

CORE_SRC = $(wildcard util/*.c cache/*.c index/*.c net/*.c registry/*.c peer/*.c control/*.c engine/*.c layer/*.c layertree/*.c snapshot/*.c)
CORE_OBJ = $(CORE_SRC:%.c=$(BUILD)/%.o)
CORE_LIB = $(BUILD)/libp2pblobs-core.a

# The snapshotter's protobuf messages: containerd's .proto files (snapshot/proto/README.md),
# compiled by protoc-c at build time into $(GEN); their objects go into the core library.
GEN       = $(BUILD)/gen
PROTO_SRC = $(wildcard snapshot/proto/*.proto snapshot/proto/google/protobuf/*.proto)
PROTO_C   = $(PROTO_SRC:snapshot/proto/%.proto=$(GEN)/%.pb-c.c)
PROTO_OBJ = $(PROTO_C:%.c=%.o)

DAEMON_SRC = $(wildcard fs/*.c)
DAEMON_OBJ = $(DAEMON_SRC:%.c=$(BUILD)/%.o)
BLOBCTL_SRC = $(wildcard tools/*.c)
BLOBCTL_OBJ = $(BLOBCTL_SRC:%.c=$(BUILD)/%.o)

UNIT_SRC  = $(wildcard tests/unit/test_*.c)
UNIT_BIN  = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC  = $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN  = $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)

PYTEST    = /usr/bin/python3 -m pytest

.PHONY: all build deps check configs unit integration fuzz fuzz-run demo demo-run bench sim lint \
        man clean install FORCE
all: build
build: $(BUILD)/p2pblobsd $(BUILD)/blobctl

# Objects depend on the flags they were built with: WERROR=1 after a plain build recompiles.
FLAGS_STAMP = $(BUILD)/.flags
FLAGS_NOW   = $(CC) $(CFLAGS_ALL) $(LDLIBS_ALL)
$(FLAGS_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(FLAGS_NOW)' | cmp -s - $@ || echo '$(FLAGS_NOW)' > $@
FORCE:

$(CORE_OBJ): $(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS_CORE) -c $< -o $@

$(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS_ALL) -c $< -o $@

$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: snapshot/proto/%.proto
	@mkdir -p $(GEN)
	@echo "  PROTOC  $<"
	@protoc-c --proto_path=snapshot/proto --c_out=$(GEN) $<

# Generated code: our warnings are not its author's; built without them.
$(PROTO_OBJ): %.o: %.c $(FLAGS_STAMP)
	@echo "  CC      $<"
	@$(CC) -std=c11 -g -pthread $(OPT) -I$(GEN) $(CORE_CFLAGS) -c $< -o $@

# Everything that includes a generated header waits for all of them.
$(filter $(BUILD)/snapshot/%,$(CORE_OBJ)): | $(PROTO_C)

$(CORE_LIB): $(CORE_OBJ) $(PROTO_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/p2pblobsd: $(DAEMON_OBJ) $(CORE_LIB)
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/blobctl: $(BLOBCTL_OBJ) $(CORE_LIB)
	$(CC) -o $@ $^ $(LDLIBS_CORE)

$(BUILD)/tests/%: tests/unit/%.c $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_CORE) -o $@ $< $(CORE_LIB) $(LDLIBS_CORE) -lcmocka

# The snapshotter with directories for layer trees (test_snapshotter_lazy.py); no cmocka.
$(BUILD)/tests/snapfake: tests/fakes/snapfake.c $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_CORE) -o $@ $< $(CORE_LIB) $(LDLIBS_CORE)

# libFuzzer targets: clang only, always with ASan + UBSan. The core is compiled once for them,
# instrumented for coverage (-fsanitize=fuzzer-no-link), into build/fuzz/libp2pblobs-core.a;
# each target links it, plus the few daemon files it needs (FUZZ_EXTRA_<target>).
FUZZ_FLAGS = -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I. -I$(GEN) -g -O1 \
             $(shell pkg-config --cflags $(CORE_PKGS))
FUZZ_SAN   = address,undefined
FUZZ_CORE_OBJ = $(filter-out engine/% layertree/% snapshot/grpc.c snapshot/snapshotter.c \
                snapshot/dirs.c snapshot/mounts.c snapshot/starts.c,$(CORE_SRC))
FUZZ_CORE_OBJ := $(FUZZ_CORE_OBJ:%.c=build/fuzz/obj/%.o)
FUZZ_LIB   = build/fuzz/libp2pblobs-core.a
FUZZ_EXTRA_fuzz_config = $(patsubst %.c,build/fuzz/obj/%.o,$(wildcard fs/config*.c))
# The snapshotter's requests, for their descriptors (generated into $(GEN) first).
FUZZ_EXTRA_fuzz_pbstrings = $(PROTO_C:%.c=build/fuzz/obj/%.o)
$(FUZZ_EXTRA_fuzz_pbstrings): | $(PROTO_C)
.PRECIOUS: build/fuzz/obj/%.o

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $< (fuzz)"
	@clang $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link,$(FUZZ_SAN) -MMD -MP -c $< -o $@

$(FUZZ_LIB): $(FUZZ_CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

.SECONDEXPANSION:
build/fuzz/%: tests/fuzz/%.c $$(FUZZ_EXTRA_$$*) $(FUZZ_LIB)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer,$(FUZZ_SAN) -MMD -MP -o $@ $< $(FUZZ_EXTRA_$*) \
		$(FUZZ_LIB) $(shell pkg-config --libs $(CORE_PKGS)) -pthread

deps:
	@scripts/deps.sh

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

fuzz: $(FUZZ_BIN)
# Short bounded runs: enough to catch a crash on the seed corpus and nearby inputs. New inputs
# go to a scratch directory (the first one given), never into the checked-in corpus.
fuzz-run: fuzz
	@set -e; for f in $(FUZZ_BIN); do n=$$(basename $$f); echo "== $$n"; \
		rm -rf build/fuzz/scratch-$$n; mkdir -p build/fuzz/scratch-$$n; \
		$$f -runs=200000 -max_len=4096 build/fuzz/scratch-$$n tests/fuzz/corpus/$$n > build/fuzz/$$n.log 2>&1 \
		  || { tail -n 40 build/fuzz/$$n.log; exit 1; }; tail -n 1 build/fuzz/$$n.log; done

integration: build $(BUILD)/tests/snapfake $(BUILD)/bench/scale_sim
	P2PBLOBS_BUILD=$(abspath $(BUILD)) $(PYTEST) -q -p no:cacheprovider tests/integration

# What CI runs. Every configuration that ships or is documented is built with -Werror; the
# README's first command (make demo) runs end to end on the release build; then the tests.
check: deps
	@scripts/lint.sh
	$(MAKE) configs
	$(MAKE) demo-run
	$(MAKE) SANITIZE=1 WERROR=1 unit
	$(MAKE) fuzz-run
	$(MAKE) SANITIZE=1 WERROR=1 integration

configs:
	$(MAKE) WERROR=1 build
	$(MAKE) WERROR=1 SANITIZE=1 build
	$(MAKE) WERROR=1 CC=clang build

demo: deps
	$(MAKE) build
	$(MAKE) demo-run

demo-run:
	scripts/demo.sh $(abspath $(BUILD))

bench: deps build
	bench/run.sh $(abspath $(BUILD))

# The scale simulation (bench/sim): the real directory, announcer, membership and rendezvous
# code at N = 100, 1000, 5000 on a simulated clock; rewrites bench/sim/results.tsv and
# bench/sim/scale.png (bench/RESULTS.md's scale section quotes them). CPU only, ~1-2 minutes.
SIM_BIN = $(BUILD)/bench/scale_sim $(BUILD)/bench/full_round
$(SIM_BIN): $(BUILD)/bench/%: bench/sim/%.c $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_CORE) -o $@ $< $(CORE_LIB) $(LDLIBS_CORE) -lm
sim: $(SIM_BIN)
	bench/sim/run.sh $(abspath $(SIM_BIN))

lint:
	@scripts/lint.sh

# man/p2pblobsd.8's OPTIONS entries, regenerated from the option table in fs/config.c.
man:
	@scripts/man-options.sh

# `make install` (DESTDIR for staging/packaging, PREFIX for the tree). The config file and the
# hosts.toml are installed only when absent, so an upgrade never overwrites an operator's edits.
# Units go where systemd looks for them under PREFIX (/usr/local/lib/systemd/system is searched);
# SYSCONFDIR stays /etc because the daemon reads /etc/p2pblobs/p2pblobs.conf by default.
PREFIX      ?= /usr/local
SBINDIR     ?= $(PREFIX)/sbin
MANDIR      ?= $(PREFIX)/share/man
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
INSTALL     ?= install

install: build
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(UNITDIR)/containerd.service.d $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(SYSCONFDIR)/p2pblobs/certs.d/_default $(DESTDIR)$(SYSCONFDIR)/containerd/conf.d
	$(INSTALL) -m 0755 $(BUILD)/p2pblobsd $(BUILD)/blobctl $(DESTDIR)$(SBINDIR)/
	$(INSTALL) -m 0644 man/p2pblobsd.8 man/blobctl.8 $(DESTDIR)$(MANDIR)/man8/
	sed 's|/usr/local/sbin/|$(SBINDIR)/|g' systemd/p2pblobs.service > $(DESTDIR)$(UNITDIR)/p2pblobs.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/p2pblobs.service
	$(INSTALL) -m 0644 systemd/containerd.service.d/p2pblobs.conf $(DESTDIR)$(UNITDIR)/containerd.service.d/p2pblobs.conf
	$(INSTALL) -m 0644 systemd/p2pblobs.tmpfiles $(DESTDIR)$(TMPFILESDIR)/p2pblobs.conf
	$(INSTALL) -m 0644 deploy/containerd/p2pblobs.toml $(DESTDIR)$(SYSCONFDIR)/containerd/conf.d/p2pblobs.toml
	@set -e; for f in p2pblobs.conf:deploy/p2pblobs.conf \
			certs.d/_default/hosts.toml:deploy/containerd/certs.d/_default/hosts.toml; do \
		dst=$(DESTDIR)$(SYSCONFDIR)/p2pblobs/$${f%%:*}; src=$${f#*:}; \
		if [ -e "$$dst" ]; then echo "  KEEP    $$dst (yours; new default: $$src)"; \
		else $(INSTALL) -m 0644 "$$src" "$$dst"; echo "  INSTALL $$dst"; fi; done
	@set -e; conf=$(DESTDIR)$(SYSCONFDIR)/p2pblobs/p2pblobs.conf; \
	dst=$(DESTDIR)$(SYSCONFDIR)/containerd/conf.d/p2pblobs-snapshotter.toml; \
	if grep -Eq '^[[:space:]]*snapshotter-socket[[:space:]]*=[[:space:]]*[^[:space:]]' "$$conf"; then \
		$(INSTALL) -m 0644 deploy/containerd/p2pblobs-snapshotter.toml "$$dst"; echo "  INSTALL $$dst"; \
	else echo "  SKIP    $$dst: $$conf serves no snapshotter-socket, so CRI stays on its own snapshotter"; fi
	@echo "installed; as root: systemd-tmpfiles --create p2pblobs.conf && systemctl daemon-reload && systemctl enable --now p2pblobs"

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
