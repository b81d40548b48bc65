#!/usr/bin/env bash
# Run the private trixie Orthanc installed by install-orthanc.sh; arguments go to Orthanc.
#
# The binary needs glibc 2.41, so it is started through trixie's own ld.so with trixie's
# library folder; the host's loader would mix two glibc versions and crash. dlopen()ed
# plugins inherit the same --library-path.
set -euo pipefail

base=${AUTHSVC_TESTENV:-$HOME/.cache/authsvc}
tree=$base/orthanc/root
libdir=$tree/usr/lib/x86_64-linux-gnu
loader=$tree/usr/lib64/ld-linux-x86-64.so.2

if [[ ! -x $loader || ! -x $tree/usr/sbin/Orthanc ]]; then
    echo "orthanc.sh: no Orthanc under $tree; run scripts/testenv/install-orthanc.sh" >&2
    exit 1
fi

# iconv modules have to come from the same glibc that is running.
export GCONV_PATH=$libdir/gconv
# DCMTK looks for its data dictionary at a compiled-in /usr path that the host does not have.
export DCMDICTPATH=$tree/usr/share/dcmtk/dicom.dic
# The Python plugin sees ld.so as the program, so it cannot locate its stdlib on its own.
export PYTHONHOME=$tree/usr
# Anything from the host's Python or library search path would leak into the private tree.
unset PYTHONPATH PYTHONSTARTUP PYTHONUSERBASE LD_LIBRARY_PATH LD_PRELOAD

exec "$loader" --library-path "$libdir:$tree/usr/lib/orthanc" "$tree/usr/sbin/Orthanc" "$@"
