# The Debian package, mosquitto-im_<version>_<arch>.deb, with CPack's DEB
# generator. scripts/package.sh configures a build tree with -DIM_DEB=ON and
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
include(CPack)
