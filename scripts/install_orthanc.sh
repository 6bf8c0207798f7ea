#!/usr/bin/env bash
# Install what the DICOMweb tests (Testing/test_dicomweb_orthanc.py) need: Debian's Orthanc PACS and
# its DICOMweb plugin. Idempotent: does nothing when both are there. The tests start and stop their
# own Orthanc (127.0.0.1, free port, generated config with authentication, temporary storage); the
# system service the package sets up is not used (in containers policy-rc.d keeps it from starting).
set -euo pipefail
ready() {
  { command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } || return 1
  for p in /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/plugins/libOrthancDicomWeb.so; do
    [ -e "$p" ] && return 0
  done
  return 1
}
ready && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb
else
  echo "install_orthanc.sh: Orthanc missing and cannot apt-get it (need root on Debian/Ubuntu); DICOMweb tests will skip" >&2
  exit 1
fi
ready || { echo "install_orthanc.sh: Orthanc or its DICOMweb plugin still missing after apt-get" >&2; exit 1; }
