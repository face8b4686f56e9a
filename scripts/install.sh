#!/usr/bin/env bash
# `make install` (see the Makefile for the variables). An upgrade keeps what the admin set:
#  - the program is a new virtualenv in $PREFIX.releases/<stamp>, built from the hashed
#    requirements.lock and checked (`scorefetch --version`) before $PREFIX, a symlink, is
#    switched to it by one rename; any failure before that leaves the old program running;
#  - a unit file is replaced only when it is still what the last install wrote (checksums in
#    $PREFIX.releases/installed-units); an edited one is kept and the new one written beside it
#    as .new; the drop-in scorefetch.service.d/local.conf is created once, never rewritten;
#  - /etc/scorefetch/config.yaml is written only when absent.
set -euo pipefail

: "${PREFIX:?}" "${CONFDIR:?}" "${STATEDIR:?}" "${UNITDIR:?}" "${BINDIR:?}" "${SYSTEM_PYTHON:?}"
SYSTEMCTL="${SYSTEMCTL:-systemctl}"
releases="$PREFIX.releases"
release="$releases/$(date -u +%Y%m%dT%H%M%SZ)-$$"
record="$releases/installed-units"
notes=()

fail() { echo "make install: $*" >&2; exit 1; }
cleanup() {
    local code=$?
    if [ -n "${release:-}" ]; then rm -rf "$release" "$PREFIX.link.$$"; fi
    exit "$code"
}
trap cleanup EXIT

[ -e "$PREFIX" ] && [ ! -L "$PREFIX" ] && [ ! -d "$PREFIX" ] && fail "$PREFIX is not a folder"
first_install=yes
[ -e "$PREFIX" ] && first_install=no

# 1. The new program, beside the old one.
install -d -m 0755 "$releases"
echo "building $release"
"$SYSTEM_PYTHON" -m venv "$release"
"$release/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
    --no-deps -r requirements.lock || fail "pip could not install requirements.lock: $PREFIX is unchanged"
# setuptools builds in ./build and never removes a module deleted from the source since the
# last build there: an upgrade from the same clone would ship it again.
rm -rf build
"$release/bin/pip" install --quiet --disable-pip-version-check --no-deps . \
    || fail "pip could not install scorefetch: $PREFIX is unchanged"
version="$("$release/bin/scorefetch" --version)" || fail "the new program does not start: $PREFIX is unchanged"
"$release/bin/pip" check >/dev/null || fail "the new virtualenv is inconsistent: $PREFIX is unchanged"
install -m 0644 README.md "$release/README.md"
install -d -m 0755 "$release/contrib"
install -m 0755 contrib/mail-office contrib/post-webhook "$release/contrib/"

# 2. The switch: one rename of a symlink. An install from before releases (a plain folder)
# is moved aside first and removed once the link is in place.
ln -sfn "$(basename "$releases")/$(basename "$release")" "$PREFIX.link.$$"
old_folder=""
if [ -d "$PREFIX" ] && [ ! -L "$PREFIX" ]; then
    old_folder="$PREFIX.old.$$"
    mv "$PREFIX" "$old_folder"
fi
if ! mv -T "$PREFIX.link.$$" "$PREFIX"; then
    [ -n "$old_folder" ] && mv "$old_folder" "$PREFIX"
    fail "could not switch $PREFIX: it is unchanged"
fi
current="$(basename "$release")"
release=""  # installed: no longer the cleanup's
[ -n "$old_folder" ] && rm -rf "$old_folder"
# Keep the release before this one (to go back by hand: see README, Upgrading); drop older.
for old in $(ls -1t "$releases" | grep -v -e '^installed-units$' -e "^$current\$" | tail -n +2); do
    rm -rf "${releases:?}/$old"
done
install -d -m 0755 "$BINDIR"
ln -sfn "$PREFIX/bin/scorefetch" "$BINDIR/scorefetch"

# 3. The service user, the configuration (only if absent), the state folder.
id -u scorefetch >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
    --home-dir "$STATEDIR" --shell /usr/sbin/nologin scorefetch
install -d -m 0750 -o root -g scorefetch "$CONFDIR"
new_config=no
if [ ! -e "$CONFDIR/config.yaml" ]; then
    install -m 0640 -o root -g scorefetch config/scorefetch.example.yaml "$CONFDIR/config.yaml"
    new_config=yes
fi
install -d -m 0700 -o scorefetch -g scorefetch "$STATEDIR"

# 4. Units: replaced only while unedited since the last install.
install -d -m 0755 "$UNITDIR"
touch "$record"
units_changed=no
recorded() { awk -v u="$1" '$2 == u { print $1 }' "$record"; }
remember() {
    awk -v u="$1" '$2 != u' "$record" > "$record.tmp"
    echo "$2  $1" >> "$record.tmp"
    mv "$record.tmp" "$record"
}
for unit in scorefetch.service scorefetch@.service; do
    target="$UNITDIR/$unit"
    fresh="$(mktemp "$UNITDIR/.$unit.XXXXXX")"
    sed -e "s|/opt/scorefetch|$PREFIX|g" -e "s|/etc/scorefetch|$CONFDIR|g" "systemd/$unit" > "$fresh"
    chmod 0644 "$fresh"
    fresh_sum="$(sha256sum < "$fresh" | cut -d' ' -f1)"
    if [ -e "$target" ]; then
        have_sum="$(sha256sum < "$target" | cut -d' ' -f1)"
    else
        have_sum=""
    fi
    if [ "$have_sum" = "$fresh_sum" ]; then
        rm -f "$fresh" "$target.new"
        remember "$unit" "$fresh_sum"
    elif [ -z "$have_sum" ] || [ "$have_sum" = "$(recorded "$unit")" ]; then
        mv "$fresh" "$target"
        rm -f "$target.new"
        remember "$unit" "$fresh_sum"
        units_changed=yes
    else
        mv "$fresh" "$target.new"
        notes+=("kept your edited $target; this release's unit is $target.new:"
                "  diff -u $target $target.new   then merge (settings of your own belong in"
                "  $UNITDIR/${unit%.service}.service.d/local.conf), remove the .new, systemctl daemon-reload")
    fi
    dropin="$UNITDIR/${unit%.service}.service.d"
    if [ ! -e "$dropin/local.conf" ]; then
        install -d -m 0755 "$dropin"
        sed -e "s|/etc/scorefetch|$CONFDIR|g" systemd/local.conf > "$dropin/local.conf"
        chmod 0644 "$dropin/local.conf"
        units_changed=yes
    fi
done
[ "$units_changed" = yes ] && { $SYSTEMCTL daemon-reload || true; }

# 5. What to do next.
echo
echo "$version installed: $PREFIX -> $releases/$current; $BINDIR/scorefetch links to it"
for line in "${notes[@]+"${notes[@]}"}"; do echo "$line"; done
if [ "$first_install" = yes ] || [ "$new_config" = yes ]; then
    cat <<EOF
Next (README, "Production quick start"):
  1. sudoedit $CONFDIR/config.yaml
  2. put each secret in $CONFDIR (install -m 0640 -g scorefetch /dev/stdin $CONFDIR/NAME);
     LoadCredential= lines for more of them go in $UNITDIR/scorefetch.service.d/local.conf
  3. sudo -u scorefetch scorefetch doctor -c $CONFDIR/config.yaml
  4. systemctl enable --now scorefetch
EOF
else
    echo "Next: systemctl restart scorefetch (and each scorefetch@NAME) to run the new program;"
    echo "      going back: README, \"Upgrading\"."
fi
