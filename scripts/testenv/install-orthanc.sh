#!/usr/bin/env bash
# Install Orthanc >= 1.12 with the DICOMweb and Python plugins for the integration tests, plus
# the runtime libraries of the Advanced Authorization plugin (liborthancframework1 and its
# dependencies: the plugin itself comes prebuilt, see setup.sh).
#
# bookworm only ships Orthanc 1.10 (no labels), so the packages come from Debian trixie.
# They are downloaded with an apt configuration that lives entirely under the target folder
# and unpacked with dpkg-deb: the host's dpkg database, apt cache and libraries stay untouched.
# The result runs through trixie's own dynamic loader (see orthanc.sh).
#
# Target: ${AUTHSVC_TESTENV:-$HOME/.cache/authsvc}/orthanc   (kept outside the repository)
# Safe to re-run: a finished install is detected by its stamp file and left alone. The stamp
# records the package list, so a tree installed from another list (e.g. one made before the
# authorization plugin's libraries were added) is rebuilt on the next run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
base=${AUTHSVC_TESTENV:-$HOME/.cache/authsvc}
dest=$base/orthanc
tree=$dest/root
stamp=$dest/installed.stamp
suite=trixie
# liborthancframework1 (trixie's name for the 1.12.7 framework, built from the same source as
# orthanc): what the authorization plugin links against, while the Orthanc binary has the
# framework built in. Its Depends bring boost 1.83, jsoncpp, curl, civetweb, lua, pugixml, DCMTK.
packages=(orthanc orthanc-dicomweb orthanc-python liborthancframework1)
libdir=$tree/usr/lib/x86_64-linux-gnu
loader=$tree/usr/lib64/ld-linux-x86-64.so.2
stamp_packages="packages: ${packages[*]}"

if [[ -f $stamp && -x $tree/usr/sbin/Orthanc ]] &&
    grep -qxF -- "$stamp_packages" "$stamp"; then
    exit 0
fi

# Reuse whichever Debian mirror the host already talks to; the network may allow no other.
debian_mirror() {
    local candidates
    candidates=$(
        { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
          awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { print $i; break } }' \
              /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
        } | grep -E '/debian/?$' || true
    )
    head -n1 <<<"$candidates"
}

mirror=${AUTHSVC_DEBIAN_MIRROR:-$(debian_mirror)}
if [[ -z $mirror ]]; then
    echo "install-orthanc: no Debian mirror found in /etc/apt; set AUTHSVC_DEBIAN_MIRROR" >&2
    exit 1
fi

aptdir=$dest/apt
mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial" "$aptdir/cache"
printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "$mirror" "$suite" >"$aptdir/sources.list"
# An empty status file makes apt believe nothing is installed, so it downloads the whole
# dependency closure (libc6 included), which is exactly what a self-contained tree needs.
: >"$aptdir/status"

apt_private=(
    -o "Dir::Etc::SourceList=$aptdir/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$aptdir/lists"
    -o "Dir::State::status=$aptdir/status"
    -o "Dir::Cache=$aptdir/cache"
    -o "Dir::Cache::archives=$aptdir/archives"
    -o "Debug::NoLocking=1"              # do not take (or wait for) the host's dpkg lock
    -o "APT::Install-Recommends=false"
    -o "APT::Sandbox::User=root"         # _apt cannot write into a folder under $HOME
)

apt-get "${apt_private[@]}" -qq update
apt-get "${apt_private[@]}" -qq -y --download-only install "${packages[@]}" >/dev/null

# Unpack into a scratch folder first so an interrupted run never leaves a half tree that
# looks usable.
rm -rf "$tree.partial"
mkdir -p "$tree.partial"
for deb in "$aptdir"/archives/*.deb; do
    dpkg-deb --extract "$deb" "$tree.partial"
done
# liborthancframework1 ships its library in /usr/lib, not in the multiarch folder that
# orthanc.sh puts on the loader's --library-path: link it there.
for lib in "$tree.partial"/usr/lib/libOrthancFramework.so.*; do
    if [[ -e $lib ]]; then
        ln -sfn "../${lib##*/}" "$tree.partial/usr/lib/x86_64-linux-gnu/${lib##*/}"
    fi
done
rm -rf "$tree"
mv "$tree.partial" "$tree"
rm -f "$aptdir"/archives/*.deb

# Prove the tree actually runs before declaring success: Orthanc itself, and the framework
# library every dynamically linked plugin (the authorization one) resolves against.
version=$("$here/orthanc.sh" --version)
echo "${version%%$'\n'*}"
framework=$(compgen -G "$libdir/libOrthancFramework.so.1*" | head -n1 || true)
if [[ -z $framework ]]; then
    echo "install-orthanc: no libOrthancFramework.so.1 under $libdir" >&2
    exit 1
fi
missing=$("$loader" --library-path "$libdir:$tree/usr/lib/orthanc" --list "$framework" 2>&1 |
    grep -E 'not found|error' || true)
if [[ -n $missing ]]; then
    echo "install-orthanc: $framework does not resolve in the tree:" >&2
    echo "$missing" >&2
    exit 1
fi
{ echo "$stamp_packages"; date -u +%FT%TZ; } >"$stamp"
