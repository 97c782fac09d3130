# auto-usb-attach -- build, test, install.
#   make                 build the release binary
#   make test            unit + integration tests (real QEMU), then the real-stack e2e suite
#   make unit            cargo tests only
#   make e2e             the real-stack suite alone (boots a VM with a real kernel + udev)
#   make test-xen        the real-Xen tier (boots Xen 4.17 + a Debian dom0 + HVM domUs under TCG)
#   make demo            watch it work end to end on a stand-in VM
#   make bench           event latency / lock contention figures (real QEMU)
#   sudo make install    binary, udev rule, systemd sync units, man pages, example config
#                        (never overwrites a config; enables the units when systemd runs)

PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UDEVDIR ?= $(shell pkg-config --variable=udevdir udev 2>/dev/null || echo /lib/udev)
SYSTEMDUNITDIR ?= $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
XENRUNDIR ?= /run/xen
UNITS = auto-usb-attach-sync.service auto-usb-attach-sync.path auto-usb-attach-sync.timer
SUBST = sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@XENRUNDIR@|$(XENRUNDIR)|g'
CARGO ?= cargo
BIN ?= target/release/auto-usb-attach
DESTDIR ?=

.PHONY: all build test unit e2e test-xen demo bench install uninstall clean

all: build

build:
	$(CARGO) build --release --locked

unit:
	$(CARGO) test --locked

e2e: build
	tests/e2e/run --bin $(BIN)

test-xen: build
	tests/xen/run --bin $(BIN)

test: unit e2e

demo: build
	tests/e2e/demo --bin $(BIN)

# Figures, not pass/fail: udev event latency and lock contention on real QEMU.
bench:
	$(CARGO) bench --locked --bench events
	$(CARGO) bench --locked --bench xen_cost

# Does not build: run `make` first (as your user), then `sudo make install`.
install:
	@test -x $(BIN) || { echo "$(BIN) is missing: run 'make' first" >&2; exit 1; }
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/auto-usb-attach
	install -d $(DESTDIR)$(UDEVDIR)/rules.d
	$(SUBST) udev-rules/99-xen-usb.rules > $(DESTDIR)$(UDEVDIR)/rules.d/99-xen-usb.rules
	chmod 0644 $(DESTDIR)$(UDEVDIR)/rules.d/99-xen-usb.rules
	install -d $(DESTDIR)$(SYSTEMDUNITDIR)
	for u in $(UNITS); do $(SUBST) systemd/$$u > $(DESTDIR)$(SYSTEMDUNITDIR)/$$u && chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/$$u || exit 1; done
	install -D -m 0644 man/auto-usb-attach.8 $(DESTDIR)$(MANDIR)/man8/auto-usb-attach.8
	install -D -m 0644 man/auto-usb-attach.toml.5 $(DESTDIR)$(MANDIR)/man5/auto-usb-attach.toml.5
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
	rm -f $(DESTDIR)$(SBINDIR)/auto-usb-attach $(DESTDIR)$(UDEVDIR)/rules.d/99-xen-usb.rules \
		$(DESTDIR)$(MANDIR)/man8/auto-usb-attach.8 $(DESTDIR)$(MANDIR)/man5/auto-usb-attach.toml.5 \
		$(addprefix $(DESTDIR)$(SYSTEMDUNITDIR)/,$(UNITS))
	@echo "left $(SYSCONFDIR)/auto-usb-attach.toml in place (your config)"
	@if [ -z "$(DESTDIR)" ] && command -v udevadm >/dev/null; then udevadm control --reload; fi

clean:
	$(CARGO) clean
