#!/usr/bin/env bash
# Install everything authsvc's integration tests start for real (tests/integration):
#   Orthanc >= 1.12 (+ DICOMweb, Python plugins)   private trixie tree, see install-orthanc.sh
#   Advanced Authorization plugin                   prebuilt .so, cached next to that tree
#   nginx with auth_request, njs                    Debian packages, run later as a private instance
#   Chromium                                        Debian package, driven by PyPI playwright
#   test OIDC provider                              npm ci in scripts/testenv/idp
#   PostgreSQL server binaries                      Debian package, for a private cluster if needed
#   OHIF 3 viewer (@ohif/app dist)                  npm registry tarball, pinned sha512, under the cache
#
# Safe to re-run and quick when everything is present: apt is consulted only when a package is
# missing. Any component that cannot be installed makes this exit non-zero. It never runs
# "playwright install" (that downloads a browser from outside the allowed registries).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
min_node_major=20   # oidc-provider 9 needs a current Node; bookworm's nodejs 18 is too old

die() {
    echo "setup: $*" >&2
    exit 1
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

njs_module=/usr/lib/nginx/modules/ngx_http_js_module.so
have_nginx() { command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; }
nginx_bin() { command -v nginx || echo /usr/sbin/nginx; }
have_postgres_server() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

apt_install() {
    # Packages such as nginx and postgresql start a system service from their postinst. The
    # tests run their own private instances, so keep the system ones down: an exit-101
    # policy-rc.d is Debian's switch for that. An existing policy is left as it is.
    local policy=/usr/sbin/policy-rc.d added_policy=
    if [[ ! -e $policy ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
        added_policy=1
    fi
    local rc=0
    {
        as_root apt-get -qq -o DPkg::Lock::Timeout=120 update &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -qq -y -o DPkg::Lock::Timeout=120 \
            install --no-install-recommends "$@" >/dev/null
    } || rc=$?
    if [[ -n $added_policy ]]; then
        as_root rm -f "$policy"
    fi
    [[ $rc -eq 0 ]] || die "apt-get install $* failed (exit $rc)"
}

# --- Orthanc: private tree, never the host's package database
"$here/install-orthanc.sh" >/dev/null || die "install-orthanc.sh failed"

# --- the real Advanced Authorization plugin (AGPL, loaded as is, never copied into the repo).
# No Debian suite packages it: take $AUTHSVC_TEST_AUTHZ_PLUGIN, else the build shared next to
# the checkout, and keep a copy beside the Orthanc tree (tests/processes.py looks there last), so
# a later run from a checkout elsewhere still has it.
testenv=${AUTHSVC_TESTENV:-$HOME/.cache/authsvc}
repo=$(cd "$here/../.." && pwd)
authz_cached=$testenv/orthanc-authorization/libOrthancAuthorization.so
authz_source=${AUTHSVC_TEST_AUTHZ_PLUGIN:-$repo/../shared/orthanc-authorization/libOrthancAuthorization.so}
if [[ -f $authz_source ]]; then
    if ! cmp -s "$authz_source" "$authz_cached"; then
        mkdir -p "${authz_cached%/*}"
        install -m 0644 "$authz_source" "$authz_cached.partial"
        mv -f "$authz_cached.partial" "$authz_cached"
    fi
elif [[ -n ${AUTHSVC_TEST_AUTHZ_PLUGIN:-} ]]; then
    die "AUTHSVC_TEST_AUTHZ_PLUGIN=$AUTHSVC_TEST_AUTHZ_PLUGIN is not a file"
elif [[ ! -f $authz_cached ]]; then
    die "no Orthanc authorization plugin (looked at $authz_source and $authz_cached);" \
        "set AUTHSVC_TEST_AUTHZ_PLUGIN to a libOrthancAuthorization.so built for trixie's Orthanc 1.12"
fi
orthanc_tree=$testenv/orthanc/root
authz_unresolved=$("$orthanc_tree/usr/lib64/ld-linux-x86-64.so.2" \
    --library-path "$orthanc_tree/usr/lib/x86_64-linux-gnu:$orthanc_tree/usr/lib/orthanc" \
    --list "$authz_cached" 2>&1 | grep -E 'not found|error|not a dynamic' || true)
[[ -z $authz_unresolved ]] ||
    die "$authz_cached does not resolve its libraries in $orthanc_tree: $authz_unresolved"

# --- Debian packages: collect what is missing so apt-get update runs at most once
missing=()
have_nginx || missing+=(nginx)
# njs: nginx/gate.conf.template keys its decision cache with nginx/authsvc_gate.js.
[[ -e $njs_module ]] || missing+=(libnginx-mod-http-js)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
have_postgres_server || missing+=(postgresql)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v wrk >/dev/null || missing+=(wrk)  # load generator of `make bench`
command -v curl >/dev/null || missing+=(curl)  # fetches the OHIF tarball below
if ((${#missing[@]})); then
    echo "setup: installing from apt: ${missing[*]}"
    apt_install "${missing[@]}"
fi

have_nginx || die "nginx is still missing after apt-get install"
# The authorization gateway depends on this module; a build without it is useless here.
"$(nginx_bin)" -V 2>&1 | grep -q -- '--with-http_auth_request_module' ||
    die "$(nginx_bin) lacks --with-http_auth_request_module"
[[ -e $njs_module ]] || die "$njs_module is still missing after apt-get install"
[[ -x /usr/bin/chromium ]] || die "/usr/bin/chromium is still missing after apt-get install"
have_postgres_server || die "no /usr/lib/postgresql/*/bin/initdb after apt-get install"
(($(node_major) >= min_node_major)) ||
    die "node $(node -v 2>/dev/null || echo missing) is too old; oidc-provider needs >= $min_node_major"

# --- test OIDC provider: reinstall whenever the lockfile changed since the last npm ci
idp=$here/idp
lock_sum=$(sha256sum "$idp/package-lock.json" | cut -d' ' -f1)
stamp=$idp/node_modules/.authsvc-lock.sha256
if [[ ! -d $idp/node_modules/oidc-provider || $(cat "$stamp" 2>/dev/null) != "$lock_sum" ]]; then
    (cd "$idp" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || die "npm ci in $idp failed"
    echo "$lock_sum" >"$stamp"
fi

# --- OHIF 3: the prebuilt viewer of the npm package @ohif/app (dist/ only, no build step),
# served by the OHIF tests' nginx (tests/integration/ohif_site.py). Pinned version and the
# registry's sha512 (npm view @ohif/app@3.13.2 dist.integrity); ~50 MB tarball, ~200 MB dist.
ohif_version=3.13.2
ohif_sha512=WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
ohif_dir=$testenv/ohif/$ohif_version
if [[ ! -f $ohif_dir/dist/index.html ]]; then
    mkdir -p "$testenv/ohif"
    ohif_tgz=$testenv/ohif/app-$ohif_version.tgz
    if [[ ! -f $ohif_tgz ]]; then
        curl -sSfL --retry 2 -o "$ohif_tgz.partial" \
            "https://registry.npmjs.org/@ohif/app/-/app-$ohif_version.tgz" ||
            die "download of @ohif/app $ohif_version failed"
        mv -f "$ohif_tgz.partial" "$ohif_tgz"
    fi
    # npm's integrity is base64; compare as hex with coreutils only.
    want=$(printf '%s' "$ohif_sha512" | base64 -d | od -An -v -tx1 | tr -d ' \n')
    got=$(sha512sum "$ohif_tgz" | cut -d' ' -f1)
    if [[ $got != "$want" ]]; then
        rm -f "$ohif_tgz"
        die "@ohif/app $ohif_version tarball has sha512 $got, expected $want"
    fi
    rm -rf "$ohif_dir.partial"
    mkdir -p "$ohif_dir.partial"
    tar -xzf "$ohif_tgz" -C "$ohif_dir.partial" --strip-components=1 package/dist ||
        die "cannot unpack $ohif_tgz"
    rm -rf "$ohif_dir"
    mv "$ohif_dir.partial" "$ohif_dir"
fi

# --- one line per component, so a CI log shows exactly what the tests ran against
orthanc_version=$("$here/orthanc.sh" --version)
orthanc_version=${orthanc_version%%$'\n'*}
postgres_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
printf '%-14s %s\n' \
    orthanc "${orthanc_version##* }" \
    orthanc-authz "$authz_cached ($(sha256sum "$authz_cached" | cut -c1-12))" \
    nginx "$("$(nginx_bin)" -v 2>&1 | sed 's/^nginx version: //')" \
    chromium "$(/usr/bin/chromium --version 2>/dev/null | head -n1)" \
    node "$(node -v)" \
    oidc-provider "$(cd "$idp" && node -p 'require("./node_modules/oidc-provider/package.json").version')" \
    ohif "$ohif_version ($ohif_dir/dist)" \
    postgresql "$("$postgres_bin/postgres" --version)"
