# Run by cpack after the packages are built (CPACK_POST_BUILD_SCRIPTS):
# takes the postinst and postrm out of libmosquitto-im-client1.
#
# CPack 3.25 writes both, each running ldconfig, into every package that
# puts a shared object under /usr/lib, and offers no switch against it
# (CPackDeb.cmake: CPACK_ADD_LDCONFIG_CALL); only a postinst and postrm of
# our own replace them, and lintian calls a script that does nothing
# maintainer-script-empty. Debian runs ldconfig through the trigger
# (packaging/libclient/triggers: activate-noawait ldconfig), which is why
# lintian warns about ldconfig in maintainer scripts
# (maintscript-calls-ldconfig). So the package is unpacked, the two scripts
# removed once they are seen to do nothing else, and packed again.
foreach(deb IN LISTS CPACK_PACKAGE_FILES)
  get_filename_component(name "${deb}" NAME)
  if(NOT name MATCHES "^libmosquitto-im-client1_")
    continue()
  endif()
  set(dir "${deb}.d")
  file(REMOVE_RECURSE "${dir}")
  execute_process(COMMAND dpkg-deb -R "${deb}" "${dir}" RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "dpkg-deb -R ${deb} failed")
  endif()
  foreach(script postinst postrm)
    if(EXISTS "${dir}/DEBIAN/${script}")
      file(STRINGS "${dir}/DEBIAN/${script}" lines)
      foreach(line IN LISTS lines)
        string(STRIP "${line}" line)
        if(NOT line STREQUAL "" AND NOT line MATCHES "^(#|set -e$|if \\[ \"\\$1\" = \"(configure|remove)\" \\]; then$|ldconfig$|fi$)")
          message(FATAL_ERROR "${script} of ${name} does more than ldconfig (\"${line}\"): look at packaging/libclient/drop-ldconfig.cmake")
        endif()
      endforeach()
      file(REMOVE "${dir}/DEBIAN/${script}")
    endif()
  endforeach()
  execute_process(COMMAND dpkg-deb --root-owner-group -Zgzip -b "${dir}" "${deb}" OUTPUT_QUIET RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "dpkg-deb -b ${dir} failed")
  endif()
  file(REMOVE_RECURSE "${dir}")
endforeach()
