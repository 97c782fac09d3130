# auto-usb-attach -- build, test, install.
#   make                 build the release binary
#   make test            everything CI runs: unit + integration tests (real QEMU), staged installs,
#                        the real-stack e2e suite, the real-systemd tier, the libvirt tier, the real-Xen tier and
#                        a short soak (SOAK_CI_STEPS steps)
#   make unit            cargo tests only
#   make test-msrv       the MSRV proven: Debian 13's own rustc/cargo 1.85 build the project and run the
#                        unit tests and the integration tests that start no QEMU, in a trixie root
#                        (tests/trixie/build-root.sh: mmdebstrap, never installed on this host; needs root)
#   make test-install    staged installs checked file by file (no root, no VM)
#   make test-systemd    the real-systemd tier (a VM with systemd as PID 1)
#   make test-systemd-deb  the same against the .deb: installed and purged with dpkg under systemd
#   make test-libvirt    the libvirt tier (a real libvirtd in that VM, a q35 domain under TCG)
#   make e2e             the real-stack suite alone (boots a VM with a real kernel + udev)
#   make e2e-qemu10      the same scenarios, the inner QEMUs Debian 13's QEMU 10 (from a trixie root)
#   make test-xen        the real-Xen tier (boots Xen 4.17 + a Debian dom0 + HVM domUs under TCG)
#   make test-xen XEN=4.20  the same on Debian 13 (Xen 4.20, QEMU 10, udev 257), the tool from its .deb,
#                        with upgrade, purge and reinstall (also: make test-xen-4.20)
#   make deb             target/debian/auto-usb-attach_<version>_<arch>.deb (+ auto-usb-attach-libvirt_...deb
#                        when the helper is built): `make install`'s files with Debian's paths, dpkg-deb
#   make test-deb        the packages checked: lintian, their file lists, install/upgrade/purge in a trixie root
#   make demo            watch it work end to end on a stand-in VM
#   make soak            seeded random plug/unplug/restart/kill soak on the real-kernel rig
#                        (SEED=n STEPS=n; SOAK_ARGS=--quiet etc.)
#   make storm           32 devices at once into one VM on the real-kernel rig
#   make bench           event latency / lock contention figures (real QEMU)
#   make bench-libvirt   libvirt attach: the tool against virsh attach-device in the libvirt rig (BENCH_PAIRS=n)
#   make bench-rig       per-event figures on the real-kernel rig (TCG): the tool vs a raw QMP client, udevd's
#                        broadcast delay with and without the rule, unplug -> gone from QEMU (BENCH_RIG_ARGS)
#   sudo make install    binary, udev rule, systemd sync units, man pages, shell completions, example config and hook
#                        (never overwrites a config; enables the units when systemd runs)
#   sudo make uninstall  removes what install put there, except the config
#
# udev-rules/ and systemd/ name the default paths below, so they work copied by
# hand; install rewrites those paths only when SBINDIR, SYSCONFDIR or XENRUNDIR
# differ from the defaults. PREFIX stays /usr/local: what `make install` from
# a source tree puts there is the admin's, not the distribution's (packagers
# pass PREFIX=/usr).

PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UDEVDIR ?= $(shell pkg-config --variable=udevdir udev 2>/dev/null || echo /lib/udev)
SYSTEMDUNITDIR ?= $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
SYSTEMDGENERATORDIR ?= $(shell pkg-config --variable=systemdsystemgeneratordir systemd 2>/dev/null || echo /lib/systemd/system-generators)
XENRUNDIR ?= /run/xen
BASHCOMPDIR ?= $(shell pkg-config --variable=completionsdir bash-completion 2>/dev/null || echo $(PREFIX)/share/bash-completion/completions)
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
DOCDIR ?= $(PREFIX)/share/doc/auto-usb-attach
# The paths written in the shipped rule and units.
DEF_SBINDIR = /usr/local/sbin
DEF_SYSCONFDIR = /etc
DEF_XENRUNDIR = /run/xen
UNITS = auto-usb-attach-sync.service auto-usb-attach-sync.path auto-usb-attach-sync.timer
# install-text SRC DST: a verbatim copy with the default paths, else the three
# default paths replaced (only where they name the binary, the config, the
# watched directory).
ifeq ($(SBINDIR):$(SYSCONFDIR):$(XENRUNDIR),$(DEF_SBINDIR):$(DEF_SYSCONFDIR):$(DEF_XENRUNDIR))
install-text = install -m 0644 $(1) $(2)
else
install-text = sed -e 's|$(DEF_SBINDIR)/auto-usb-attach|$(SBINDIR)/auto-usb-attach|g' \
	-e 's|$(DEF_SYSCONFDIR)/auto-usb-attach.toml|$(SYSCONFDIR)/auto-usb-attach.toml|g' \
	-e 's|^PathChanged=$(DEF_XENRUNDIR)$$|PathChanged=$(XENRUNDIR)|' $(1) > $(2) && chmod 0644 $(2)
endif
CARGO ?= cargo
# The libvirt backend's helper, auto-usb-attach-libvirt, links libvirt's C library (libvirt0):
# built when pkg-config finds libvirt (Debian: libvirt-dev), left out otherwise (FEATURES=
# leaves it out on any host). The main binary never links libvirt.
FEATURES ?= $(shell pkg-config --exists libvirt 2>/dev/null && echo libvirt)
CARGO_FEATURES = $(if $(strip $(FEATURES)),--features $(strip $(FEATURES)))
BIN ?= target/release/auto-usb-attach
DESTDIR ?=

.PHONY: all build deb deb-prev test-deb test-xen-4.20 e2e-qemu10 test-systemd-deb test unit test-msrv bench-floor bench-libvirt bench-rig test-install test-systemd test-libvirt e2e test-xen demo soak soak-ci storm bench-storm bench install uninstall clean

all: build

build:
	$(CARGO) build --release --locked $(CARGO_FEATURES)

unit:
	$(CARGO) test --locked $(CARGO_FEATURES)

e2e: build
	tests/e2e/run --bin $(BIN)

# The same e2e scenarios with Debian 13's qemu-system-x86_64 10 as the inner QEMU (from the Xen
# 4.20 tier's dom0 root, tests/trixie/build-root.sh; the outer VM and its kernel stay this machine's).
# QEMU10_SKIP=a,b leaves scenarios out (none are: pc_usb, once failing because QEMU >= 9 puts
# `-usb`'s UHCI under the PIIX3 southbridge, passes since the tool looks there).
QEMU10_ROOT ?= $(or $(AUA_XEN420_DIR),/var/tmp/aua-xen-4.20)/root
QEMU10_SKIP ?=
e2e-qemu10: build
	tests/trixie/build-root.sh $(QEMU10_ROOT) dom0
	tests/e2e/run --bin $(BIN) --qemu-root $(QEMU10_ROOT) $(if $(QEMU10_SKIP),--skip $(QEMU10_SKIP))

test-install:
	tests/install/run

# The Debian packages (packaging/deb/build-deb: why dpkg-deb and not cargo-deb is said there).
DEB_OUT ?= target/debian
deb: build
	BIN=$(BIN) DEB_OUT=$(DEB_OUT) packaging/deb/build-deb

# The previous version for the upgrade checks: this tree packaged as <version>~prev.
deb-prev: build
	BIN=$(BIN) DEB_OUT=$(DEB_OUT)/prev DEB_VERSION=$$(sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -1)~prev \
		packaging/deb/build-deb

test-deb: deb
	tests/deb/run --out $(DEB_OUT)

test-msrv:
	tests/msrv/run

test-systemd: build
	tests/systemd/run --bin $(BIN)

# The real-systemd tier against the Debian package (dpkg -i / --purge under systemd as PID 1).
test-systemd-deb: deb
	tests/systemd/run --deb $(DEB_OUT)/auto-usb-attach_$$(sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -1)_$$(dpkg --print-architecture).deb

# XEN=4.17 (Debian 12, the binary installed as make install does) or XEN=4.20 (Debian 13 dom0 root,
# the tool from its .deb: dpkg -i of the previous version, then this one, purge at the end).
XEN ?= 4.17
XEN_DEB = $(filter-out 4.17,$(XEN))
test-xen: build $(if $(XEN_DEB),deb deb-prev)
	tests/xen/run --bin $(BIN) --xen $(XEN) $(if $(XEN_DEB),--deb $(DEB_OUT) --deb-prev $(DEB_OUT)/prev)

test-xen-4.20:
	$(MAKE) --no-print-directory test-xen XEN=4.20

test-libvirt: build
	tests/libvirt/run --bin $(BIN)

# Every tier, each timed; a failing tier does not stop the ones after it (make test still fails).
TEST_TIERS = unit test-msrv test-install test-deb e2e e2e-qemu10 test-systemd test-systemd-deb test-libvirt test-xen test-xen-4.20 soak-ci
test:
	@fail=""; for t in $(TEST_TIERS); do s=$$(date +%s); $(MAKE) --no-print-directory $$t; rc=$$?; \
		echo "tier $$t: $$(( $$(date +%s) - s )) s (exit $$rc)"; [ $$rc = 0 ] || fail="$$fail $$t"; done; \
		if [ -n "$$fail" ]; then echo "failed tiers:$$fail"; exit 1; fi

# CI's soak: a fixed seed, so a failure names a reproducible step (`make soak SEED=7 STEPS=...`).
SOAK_CI_STEPS ?= 200
soak-ci: build
	tests/soak/run --bin $(BIN) --seed 7 --steps $(SOAK_CI_STEPS) --quiet

SEED ?= 1
STEPS ?= 300
soak: build
	tests/soak/run --bin $(BIN) --seed $(SEED) --steps $(STEPS) $(SOAK_ARGS)

storm: build
	tests/soak/run --bin $(BIN) --storm 32 $(SOAK_ARGS)

# The storm against its floor, side by side in one rig run (issue 23): 32 gadgets at once into a
# plain QEMU VM, then one raw QMP session adding the same devices; prints the ratio.
bench-storm: build
	tests/soak/run --bin $(BIN) --storm 32 --plain --floor $(SOAK_ARGS)

demo: build
	tests/e2e/demo --bin $(BIN)

# Figures, not pass/fail: udev event latency and lock contention on real QEMU.
bench: bench-floor
	$(CARGO) bench --locked --bench events
	$(CARGO) bench --locked --bench xen_cost

# The per-event remove path against a bare QMP client, side by side (issue 23's floor).
bench-floor:
	$(CARGO) build --release --locked --example qmp_floor
	$(CARGO) bench --locked --bench floor

# libvirt attach, the tool against `virsh attach-device` on the same domain and device in the
# libvirt tier's rig (issue 23): BENCH_PAIRS alternating pairs, p50/p90 of each and the ratio.
BENCH_PAIRS ?= 12
bench-libvirt: build
	tests/libvirt/run --bin $(BIN) --bench $(BENCH_PAIRS)
# The same floor on the real-kernel rig (a TCG VM with real udevd and gadget devices), with udevd's
# broadcast delay with and without the rule and the unplug latency (issue 23): tests/bench/run.
# One TCG rig at a time on a small machine: run it under a lock shared with the other rig tiers
# (e.g. flock /var/tmp/aua-rig.lock make bench-rig).
bench-rig: build
	$(CARGO) build --release --locked --example qmp_floor
	tests/bench/run --bin $(BIN) $(BENCH_RIG_ARGS)

# Does not build: run `make` first (as your user), then `sudo make install`.
install:
	@test -x $(BIN) || { echo "$(BIN) is missing: run 'make' first" >&2; exit 1; }
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/auto-usb-attach
	@# The libvirt helper, when it was built (FEATURES=libvirt): found beside the binary.
	if [ -x $(dir $(BIN))auto-usb-attach-libvirt ]; then \
		install -m 0755 $(dir $(BIN))auto-usb-attach-libvirt $(DESTDIR)$(SBINDIR)/auto-usb-attach-libvirt; fi
	install -d $(DESTDIR)$(UDEVDIR)/rules.d
	$(call install-text,udev-rules/99-xen-usb.rules,$(DESTDIR)$(UDEVDIR)/rules.d/99-xen-usb.rules)
	install -d $(DESTDIR)$(SYSTEMDUNITDIR)
	for u in $(UNITS); do $(call install-text,systemd/$$u,$(DESTDIR)$(SYSTEMDUNITDIR)/$$u) || exit 1; done
	@# The generator (a link to the binary, run by its name) reads the default config only: with
	@# another SYSCONFDIR the admin adds plain VMs' socket directories to the path unit by hand.
ifeq ($(SYSCONFDIR),$(DEF_SYSCONFDIR))
	install -d $(DESTDIR)$(SYSTEMDGENERATORDIR)
	ln -sfn $(SBINDIR)/auto-usb-attach $(DESTDIR)$(SYSTEMDGENERATORDIR)/auto-usb-attach-generator
else
	@echo "not installing auto-usb-attach-generator: it reads $(DEF_SYSCONFDIR)/auto-usb-attach.toml, not $(SYSCONFDIR)'s"
endif
	install -D -m 0644 man/auto-usb-attach.8 $(DESTDIR)$(MANDIR)/man8/auto-usb-attach.8
	install -D -m 0644 man/auto-usb-attach.toml.5 $(DESTDIR)$(MANDIR)/man5/auto-usb-attach.toml.5
	install -d $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	$(BIN) completions bash > $(DESTDIR)$(BASHCOMPDIR)/auto-usb-attach
	$(BIN) completions zsh > $(DESTDIR)$(ZSHCOMPDIR)/_auto-usb-attach
	$(BIN) completions fish > $(DESTDIR)$(FISHCOMPDIR)/auto-usb-attach.fish
	chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/auto-usb-attach $(DESTDIR)$(ZSHCOMPDIR)/_auto-usb-attach \
		$(DESTDIR)$(FISHCOMPDIR)/auto-usb-attach.fish
	install -d $(DESTDIR)$(DOCDIR)
	install -m 0644 examples/auto-usb-attach.toml README.md CHANGELOG.md LICENSE $(DESTDIR)$(DOCDIR)/
	install -D -m 0755 examples/hooks/notify-send $(DESTDIR)$(DOCDIR)/hooks/notify-send
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/auto-usb-attach.toml ]; then \
		echo "keeping existing $(DESTDIR)$(SYSCONFDIR)/auto-usb-attach.toml"; \
	else \
		install -D -m 0644 examples/auto-usb-attach.toml $(DESTDIR)$(SYSCONFDIR)/auto-usb-attach.toml; \
	fi
	@if [ -z "$(DESTDIR)" ] && command -v udevadm >/dev/null; then udevadm control --reload; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemctl daemon-reload && systemctl enable --now auto-usb-attach-sync.path auto-usb-attach-sync.timer; fi

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemctl disable --now auto-usb-attach-sync.path auto-usb-attach-sync.timer || true; fi
	rm -f $(DESTDIR)$(SBINDIR)/auto-usb-attach $(DESTDIR)$(SBINDIR)/auto-usb-attach-libvirt \
		$(DESTDIR)$(UDEVDIR)/rules.d/99-xen-usb.rules \
		$(DESTDIR)$(MANDIR)/man8/auto-usb-attach.8 $(DESTDIR)$(MANDIR)/man5/auto-usb-attach.toml.5 \
		$(DESTDIR)$(BASHCOMPDIR)/auto-usb-attach $(DESTDIR)$(ZSHCOMPDIR)/_auto-usb-attach \
		$(DESTDIR)$(FISHCOMPDIR)/auto-usb-attach.fish \
		$(addprefix $(DESTDIR)$(SYSTEMDUNITDIR)/,$(UNITS)) \
		$(DESTDIR)$(SYSTEMDGENERATORDIR)/auto-usb-attach-generator \
		$(addprefix $(DESTDIR)$(DOCDIR)/,auto-usb-attach.toml README.md CHANGELOG.md LICENSE hooks/notify-send)
	rmdir $(DESTDIR)$(DOCDIR)/hooks $(DESTDIR)$(DOCDIR) 2>/dev/null || true
	@echo "left $(SYSCONFDIR)/auto-usb-attach.toml in place (your config)"
	@if [ -z "$(DESTDIR)" ] && command -v udevadm >/dev/null; then udevadm control --reload; fi

clean:
	$(CARGO) clean
