# The Debian packages, with CPack's DEB generator, one per install component:
#   mosquitto-im_<version>_<arch>.deb                  (component main)
#   libmosquitto-im-client1_<version>_<arch>.deb       (mimclient: the .so.1)
#   libmosquitto-im-client-dev_<version>_<arch>.deb    (mimclient-dev: headers, .so, .a, .pc) scripts/package.sh configures a build tree with -DIM_DEB=ON and
# the prefix /usr and runs cpack there; other build trees skip all this.
#
# Contents (the install() rules in CMakeLists.txt, plus what follows):
#   /usr/lib/<multiarch>/mosquitto-im/mosquitto_im.so     the plugin
#   /usr/bin/imcat imchat imstore imtoken                  the tools
#   /etc/mosquitto/conf.d/mosquitto-im.conf                commented snippet (conffile)
#   /usr/share/doc/mosquitto-im/                           docs, copyright, changelog.gz
#   /var/lib/mosquitto-im                                  made by postinst, owner mosquitto
option(IM_DEB "Configure the Debian package (scripts/package.sh sets this)" OFF)
if(NOT IM_DEB)
  return()
endif()
if(NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  message(FATAL_ERROR "IM_DEB needs -DCMAKE_INSTALL_PREFIX=/usr (the snippet names the installed plugin's path)")
endif()

# The package version is the project's; packaging/changelog must have an
# entry for it on top (dpkg and lintian compare the two).
file(STRINGS ${CMAKE_SOURCE_DIR}/packaging/changelog _top LIMIT_COUNT 1)
if(NOT _top MATCHES "^mosquitto-im \\(${PROJECT_VERSION}\\) ")
  message(FATAL_ERROR "packaging/changelog starts with '${_top}': add an entry for version ${PROJECT_VERSION} on top")
endif()
# The package is native (its version is the project's, no Debian revision:
# the packaging lives in the project), so the changelog is changelog.gz,
# not changelog.Debian.gz (lintian: wrong-name-for-changelog-of-native-
# package); gzip -9 without name or time stamp, as policy wants.
execute_process(COMMAND gzip -9nc ${CMAKE_SOURCE_DIR}/packaging/changelog
                OUTPUT_FILE ${CMAKE_BINARY_DIR}/packaging/changelog.gz
                RESULT_VARIABLE _rc)
if(_rc)
  message(FATAL_ERROR "gzip packaging/changelog failed")
endif()
install(FILES ${CMAKE_SOURCE_DIR}/packaging/copyright ${CMAKE_BINARY_DIR}/packaging/changelog.gz
        DESTINATION ${IM_DOC_INSTALL_DIR})
# A manual page for each program in /usr/bin (lintian: no-manual-page),
# compressed as the changelog is.
foreach(_prog imcat imchat imstore imtoken)
  execute_process(COMMAND gzip -9nc ${CMAKE_SOURCE_DIR}/packaging/man/${_prog}.1
                  OUTPUT_FILE ${CMAKE_BINARY_DIR}/packaging/${_prog}.1.gz
                  RESULT_VARIABLE _rc)
  if(_rc)
    message(FATAL_ERROR "gzip packaging/man/${_prog}.1 failed")
  endif()
  install(FILES ${CMAKE_BINARY_DIR}/packaging/${_prog}.1.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
endforeach()
# Each library package has its own doc folder with copyright and changelog
# (policy 12.5, lintian: no-copyright-file).
foreach(_pkg libmosquitto-im-client1 libmosquitto-im-client-dev)
  if(_pkg STREQUAL "libmosquitto-im-client1")
    set(_comp mimclient)
  else()
    set(_comp mimclient-dev)
  endif()
  install(FILES ${CMAKE_SOURCE_DIR}/packaging/copyright ${CMAKE_BINARY_DIR}/packaging/changelog.gz
          DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/${_pkg} COMPONENT ${_comp})
endforeach()
install(FILES ${CMAKE_SOURCE_DIR}/clients/c/README.md DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/libmosquitto-im-client-dev
        COMPONENT mimclient-dev)
file(WRITE ${CMAKE_BINARY_DIR}/packaging/conffiles
     "${CMAKE_INSTALL_FULL_SYSCONFDIR}/mosquitto/conf.d/mosquitto-im.conf\n")

set(IM_DEB_MAINTAINER "mosquitto-im <dev@mosquitto-im.invalid>" CACHE STRING "Maintainer field of the .deb")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME mosquitto-im)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "instant-messaging semantics for the Mosquitto MQTT broker")
set(CPACK_PACKAGE_DESCRIPTION "A Mosquitto 2.0 plugin that turns MQTT topics into chat inboxes and
groups: every message published to a user's inbox (im/u/<user>) gets a
gap-free sequence number, is stored in SQLite before it is acknowledged,
is delivered live as a small frame, and can be caught up after any time
offline with one sync request. Works with stock MQTT clients.
.
This package contains the plugin, a commented configuration snippet for
/etc/mosquitto/conf.d, and the command-line tools imcat (readable frames),
imchat (a chat client), imstore (store inspection) and imtoken (login
tokens).")
set(CPACK_DEBIAN_PACKAGE_NAME mosquitto-im)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${IM_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Library dependencies from dpkg-shlibdeps, plus the broker (and its user).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "mosquitto")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_BINARY_DIR}/packaging/conffiles
    ${CMAKE_SOURCE_DIR}/packaging/postinst
    ${CMAKE_SOURCE_DIR}/packaging/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

# One package per component; the plugin package keeps its name and fields.
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL main mimclient mimclient-dev)
set(CPACK_DEBIAN_MAIN_PACKAGE_NAME mosquitto-im)
set(CPACK_DEBIAN_MAIN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_MAIN_PACKAGE_SECTION net)
# The broker dependency and the maintainer scripts are the plugin's only.
# (imcat and imchat link the client library: found in the build tree by
# dpkg-shlibdeps, named here with this very version.)
set(CPACK_DEBIAN_MAIN_PACKAGE_DEPENDS "${CPACK_DEBIAN_PACKAGE_DEPENDS}, libmosquitto-im-client1 (= ${PROJECT_VERSION})")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CMAKE_BINARY_DIR}/clients/c)
set(CPACK_DEBIAN_MAIN_PACKAGE_CONTROL_EXTRA ${CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA})
unset(CPACK_DEBIAN_PACKAGE_DEPENDS)
unset(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA)
set(CPACK_COMPONENT_MAIN_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION_SUMMARY}\n${CPACK_PACKAGE_DESCRIPTION}")
# Each component's description starts with its own synopsis: CPack would
# put this summary on top of every package's (lintian:
# description-synopsis-is-duplicated), so it is left at CPack's default.
unset(CPACK_PACKAGE_DESCRIPTION_SUMMARY)
# The shared library: its shlibs, symbols and ldconfig trigger files are in
# packaging/libclient/ (CPack 3.25 makes shlibs only for every component at
# once). The
# symbols file lists every exported mim_* function; a new one is added
# with the version that adds it.
set(CPACK_DEBIAN_MIMCLIENT_PACKAGE_NAME libmosquitto-im-client1)
set(CPACK_DEBIAN_MIMCLIENT_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_MIMCLIENT_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_MIMCLIENT_PACKAGE_CONTROL_EXTRA ${CMAKE_SOURCE_DIR}/packaging/libclient/shlibs
    ${CMAKE_SOURCE_DIR}/packaging/libclient/symbols ${CMAKE_SOURCE_DIR}/packaging/libclient/triggers)
# ... and the postinst and postrm CPack adds to it anyway, each running
# ldconfig (lintian: maintscript-calls-ldconfig), come out after the build:
# the trigger does that job.
set(CPACK_POST_BUILD_SCRIPTS ${CMAKE_SOURCE_DIR}/packaging/libclient/drop-ldconfig.cmake)
set(CPACK_COMPONENT_MIMCLIENT_DESCRIPTION "mosquitto-im client library
libmosquitto-im-client runs the mosquitto-im client algorithm on top of
libmosquitto: every message of a user's inbox and groups delivered once
and in order across reconnects and restarts, messages sent stored exactly
once, receipts, read marks, typing, edits, recalls and groups.
.
This package contains the shared library.")
set(CPACK_DEBIAN_MIMCLIENT-DEV_PACKAGE_NAME libmosquitto-im-client-dev)
set(CPACK_DEBIAN_MIMCLIENT-DEV_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_MIMCLIENT-DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_MIMCLIENT-DEV_PACKAGE_SHLIBDEPS OFF)
# The static library needs these at link time (pkg-config --static).
set(CPACK_DEBIAN_MIMCLIENT-DEV_PACKAGE_DEPENDS
    "libmosquitto-im-client1 (= ${PROJECT_VERSION}), libmosquitto-dev, libprotobuf-c-dev, zlib1g-dev")
set(CPACK_COMPONENT_MIMCLIENT-DEV_DESCRIPTION "mosquitto-im client library (development files)
libmosquitto-im-client runs the mosquitto-im client algorithm on top of
libmosquitto (see libmosquitto-im-client1).
.
This package contains the header, the static library and the pkg-config
file mosquitto-im-client.")
include(CPack)
