# make install / make uninstall.
#
#   make install [DESTDIR=/staging] [PREFIX=/usr/local] [SYSCONFDIR=/etc]
#
# Installs the binaries to $(PREFIX)/bin, the configuration to
# $(SYSCONFDIR)/quilt (an existing file is never overwritten: the new one goes
# beside it as FILE.dist, and install says so), the init scripts to
# $(SYSCONFDIR)/init.d with their settings in $(SYSCONFDIR)/default/quilt,
# the systemd units to $(SYSTEMDUNITDIR) and text help pages (each program's
# -h) to $(PREFIX)/share/doc/quilt. NO_BUILD=1 installs what is in $(BIN)
# without building it first.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
QUILT_BINDIR = $(PREFIX)/bin
QUILT_LIBDIR = $(PREFIX)/lib/quilt
QUILT_DOCDIR = $(PREFIX)/share/doc/quilt
QUILT_CONFDIR = $(SYSCONFDIR)/quilt
QUILT_INITDIR = $(SYSCONFDIR)/init.d
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
INSTALL ?= install

# Rewrite the paths the shipped files assume (/usr/local, /etc) to the
# install's.
QUILT_SED = sed -e 's|^PREFIX=/usr/local$$|PREFIX=$(PREFIX)|' -e 's|^SYSCONFDIR=/etc$$|SYSCONFDIR=$(SYSCONFDIR)|' \
	-e 's|/usr/local/|$(PREFIX)/|g' -e 's|/etc/quilt|$(QUILT_CONFDIR)|g' -e 's|/etc/default/quilt|$(SYSCONFDIR)/default/quilt|g'

.PHONY: install uninstall install-config install-help

install: $(if $(NO_BUILD),,build) install-config install-help ## install binaries, config (never overwritten), init scripts, systemd units, help pages
	$(INSTALL) -d $(DESTDIR)$(QUILT_BINDIR) $(DESTDIR)$(QUILT_LIBDIR) $(DESTDIR)$(QUILT_INITDIR) $(DESTDIR)$(SYSTEMDUNITDIR)
	$(INSTALL) -m 755 $(BINARIES) $(DESTDIR)$(QUILT_BINDIR)/
	$(INSTALL) -m 644 etc/init.d/quilt-functions.sh $(DESTDIR)$(QUILT_LIBDIR)/init-functions.sh
	@for f in quilt-qmd quilt-smd; do \
	  $(QUILT_SED) etc/init.d/$$f > $(DESTDIR)$(QUILT_INITDIR)/$$f.tmp && chmod 755 $(DESTDIR)$(QUILT_INITDIR)/$$f.tmp && \
	  mv $(DESTDIR)$(QUILT_INITDIR)/$$f.tmp $(DESTDIR)$(QUILT_INITDIR)/$$f && echo "installed $(QUILT_INITDIR)/$$f" || exit 1; \
	done
	@for f in etc/systemd/*.service; do \
	  $(QUILT_SED) $$f > $(DESTDIR)$(SYSTEMDUNITDIR)/$${f##*/} && chmod 644 $(DESTDIR)$(SYSTEMDUNITDIR)/$${f##*/} && \
	  echo "installed $(SYSTEMDUNITDIR)/$${f##*/}" || exit 1; \
	done
	@echo "quilt installed under $(DESTDIR)$(PREFIX); start it with $(QUILT_INITDIR)/quilt-qmd start && $(QUILT_INITDIR)/quilt-smd start"
	@echo "  (systemd: systemctl daemon-reload && systemctl enable --now quilt-qmd quilt-smd@NAME)"

# install_conf SRC DEST MODE: install SRC unless DEST exists with other
# content; then install it as DEST.dist and say so.
define quilt_install_conf
	if [ -e "$(2)" ] && ! cmp -s "$(1)" "$(2)"; then \
	  $(INSTALL) -m $(3) "$(1)" "$(2).dist" && echo "kept $(2) (yours); the shipped version is $(2).dist"; \
	elif [ ! -e "$(2)" ]; then \
	  $(INSTALL) -m $(3) "$(1)" "$(2)" && echo "installed $(2)"; \
	fi
endef

install-config:
	@set -e; root=$(DESTDIR)$(QUILT_CONFDIR); \
	$(INSTALL) -d -m 755 $$root $$root/smd.d $$root/patterns.d $$root/tests; \
	$(INSTALL) -d -m 700 $$root/smd.d/secrets; \
	$(call quilt_install_conf,etc/quilt/quilt.cfg,$$root/quilt.cfg,644); \
	for f in etc/quilt/smd.d/*.cfg etc/quilt/patterns.d/* etc/quilt/tests/*; do \
	  [ -f "$$f" ] || continue; d=$$root/$${f#etc/quilt/}; \
	  $(call quilt_install_conf,$$f,$$d,644); \
	done; \
	for f in etc/quilt/smd.d/secrets/*; do \
	  [ -f "$$f" ] || continue; d=$$root/$${f#etc/quilt/}; \
	  $(call quilt_install_conf,$$f,$$d,600); \
	done; \
	$(INSTALL) -d $(DESTDIR)$(SYSCONFDIR)/default; \
	$(QUILT_SED) etc/init.d/quilt.default > $(DESTDIR)$(SYSCONFDIR)/default/quilt.new; \
	$(call quilt_install_conf,$(DESTDIR)$(SYSCONFDIR)/default/quilt.new,$(DESTDIR)$(SYSCONFDIR)/default/quilt,644); \
	rm -f $(DESTDIR)$(SYSCONFDIR)/default/quilt.new

# Text help pages: what each program prints for -h (the daemons print
# their usage to stderr); quiltctl gets one section per command.
install-help: $(if $(NO_BUILD),,build)
	@set -e; d=$(DESTDIR)$(QUILT_DOCDIR); $(INSTALL) -d $$d; \
	for p in quilt-qmd quilt-smd; do \
	  $(BIN)/$$p -h > $$d/$$p.txt 2>&1 || { echo "$(BIN)/$$p -h failed" >&2; exit 1; }; \
	  echo "installed $(QUILT_DOCDIR)/$$p.txt"; \
	done; \
	{ $(BIN)/quiltctl --help; \
	  for c in $$($(BIN)/quiltctl --help | awk '/^Available Commands:/{f=1;next} /^$$/{f=0} f{print $$1}'); do \
	    [ "$$c" = help ] && continue; printf '\n\n==== quiltctl %s ====\n\n' "$$c"; $(BIN)/quiltctl $$c --help; \
	  done; } > $$d/quiltctl.txt; \
	echo "installed $(QUILT_DOCDIR)/quiltctl.txt"

uninstall: ## remove what make install put in place, except the configuration
	rm -f $(addprefix $(DESTDIR)$(QUILT_BINDIR)/,quilt-qmd quilt-smd quiltctl)
	rm -f $(DESTDIR)$(QUILT_INITDIR)/quilt-qmd $(DESTDIR)$(QUILT_INITDIR)/quilt-smd
	rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/quilt-qmd.service $(DESTDIR)$(SYSTEMDUNITDIR)/quilt-smd@.service
	rm -rf $(DESTDIR)$(QUILT_LIBDIR) $(DESTDIR)$(QUILT_DOCDIR)
	@echo "left $(DESTDIR)$(QUILT_CONFDIR) and $(DESTDIR)$(SYSCONFDIR)/default/quilt in place (your configuration); remove them by hand if you want"
