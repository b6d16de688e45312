#!/usr/bin/env bash
# Builds the Debian package: build-deb/mosquitto-im_<version>_<arch>.deb
# (packaging/package.cmake says what is in it). Prints the file's path on
# its last line. Install it with `apt install ./build-deb/mosquitto-im_*.deb`.
#
# Env: IM_DEB_BUILD, the build tree (default build-deb).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
build=${IM_DEB_BUILD:-build-deb}
# Debian's hardening flags (stack protector, fortify, relro, bindnow), as a
# package built by dpkg-buildpackage would get them.
export DEB_BUILD_MAINT_OPTIONS=hardening=+all
cflags="$(dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS)"
ldflags=$(dpkg-buildflags --get LDFLAGS)
cmake -S . -B "$build" -DIM_DEB=ON -DCMAKE_INSTALL_PREFIX=/usr -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS="$cflags" \
  -DCMAKE_EXE_LINKER_FLAGS="$ldflags" -DCMAKE_MODULE_LINKER_FLAGS="$ldflags" >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
rm -f "$build"/mosquitto-im_*.deb
(cd "$build" && cpack -G DEB) >"$build/cpack.log" 2>&1 || { cat "$build/cpack.log" >&2; exit 1; }
deb=$(ls "$build"/mosquitto-im_*.deb)
echo "$deb"
