# Finds nng (target nng::nng) for the daemon, the agent library and the tests.
#
# nng before 1.6.0 has bug #1518: one peer that connects to a listener and
# hangs up before the SP handshake (a bare connect()/close(), a port scan, a
# second `lmsched serve` probing the socket path) stops the listener for good,
# and the daemon answers nobody until it is restarted. Where the platform's
# nng is that old (Debian bookworm: 1.5.2), scripts/nng-build makes a static
# nng from the platform's own source package with our fix, and scripts/lib.sh
# points this file at it through LMSCHED_NNG_PREFIX (docs/nng.md):
#
#   cmake -S . -B build -DLMSCHED_NNG_PREFIX="$(scripts/nng-build)"
#
# The same build carries our fixes for three later-found bugs (docs/nng.md):
# #1813 (nng_close hangs when a message arrives as a pipe closes), #1713 (a
# request sent as its pipe closes is leaked) and ep_close (closing a socket
# while it dials leaks the connection; in no nng release fixed).
#
# Sets:
#   LMSCHED_NNG_STATIC          nng::nng is a static archive (the patched
#                               build): agentlib hides its symbols in the
#                               shared library
#   LMSCHED_NNG_PATCHED_1518    our patched build is used; also a compile
#                               definition (=1) of every target
#   LMSCHED_NNG_FIXES           the fixes it carries ("1518;1813;1713;ep_close");
#                               each is also a compile definition
#                               LMSCHED_NNG_PATCHED_<FIX>=1 of every target
# and warns loudly when the nng found has one of the bugs.

set(LMSCHED_NNG_PREFIX "" CACHE PATH
  "Prefix of the patched static nng made by scripts/nng-build (empty: the system's nng)")

set(LMSCHED_NNG_PATCHED_1518 OFF)
set(LMSCHED_NNG_FIXES "")
set(LMSCHED_NNG_STATIC OFF)

# find_package() keeps the nng_DIR it found first in the cache: when the
# prefix is given, changed or taken away in an existing build directory, look
# again.
if(NOT "${LMSCHED_NNG_PREFIX}" STREQUAL "${_LMSCHED_NNG_PREFIX_USED}")
  unset(nng_DIR CACHE)
endif()
set(_LMSCHED_NNG_PREFIX_USED "${LMSCHED_NNG_PREFIX}" CACHE INTERNAL "")

if(LMSCHED_NNG_PREFIX)
  set(_stamp "${LMSCHED_NNG_PREFIX}/lmsched-nng.txt")
  if(NOT EXISTS "${_stamp}")
    message(FATAL_ERROR "LMSCHED_NNG_PREFIX=${LMSCHED_NNG_PREFIX} is not a complete build "
      "of scripts/nng-build (no lmsched-nng.txt); run scripts/nng-build and pass what it prints")
  endif()
  find_package(nng 1.5 CONFIG REQUIRED PATHS "${LMSCHED_NNG_PREFIX}" NO_DEFAULT_PATH)
  file(STRINGS "${_stamp}" _fixes REGEX "^fixes=")
  string(REGEX REPLACE "^fixes=" "" _fixes "${_fixes}")
  string(REGEX MATCHALL "[A-Za-z0-9_]+" LMSCHED_NNG_FIXES "${_fixes}")
  foreach(_fix IN LISTS LMSCHED_NNG_FIXES)
    string(TOUPPER "${_fix}" _fix_def)
    add_compile_definitions(LMSCHED_NNG_PATCHED_${_fix_def}=1)
  endforeach()
  if("1518" IN_LIST LMSCHED_NNG_FIXES)
    set(LMSCHED_NNG_PATCHED_1518 ON)
  endif()
  set(LMSCHED_NNG_STATIC ON)
else()
  find_package(nng 1.5 CONFIG REQUIRED)
  get_target_property(_nng_type nng::nng TYPE)
  if(_nng_type STREQUAL "STATIC_LIBRARY")
    set(LMSCHED_NNG_STATIC ON)
  endif()
endif()

if(LMSCHED_NNG_PATCHED_1518)
  string(REPLACE ";" " " _fixes "${LMSCHED_NNG_FIXES}")
  message(STATUS "nng ${nng_VERSION}: static, patched (${_fixes}) (${LMSCHED_NNG_PREFIX})")
elseif(nng_VERSION VERSION_LESS 1.6.0)
  message(WARNING
    "nng ${nng_VERSION} (${nng_DIR}) has bug #1518 "
    "(https://github.com/nanomsg/nng/issues/1518): one process that connects to "
    "the daemon's socket and closes it without speaking SP stops the daemon from "
    "answering anyone until it is restarted. Build the patched nng and point the "
    "build at it:\n"
    "  ${PROJECT_SOURCE_DIR}/scripts/nng-build\n"
    "  cmake -B ${PROJECT_BINARY_DIR} -DLMSCHED_NNG_PREFIX=\"$(${PROJECT_SOURCE_DIR}/scripts/nng-build prefix)\"\n"
    "(scripts/test and scripts/demo do this themselves; see docs/nng.md). "
    "The stray-connection tests (faults_stray_test, faults_nng_echo_test) fail with this nng, "
    "and so do faults_nng_close_test and faults_nng_leak_test (nng #1813, #1713 and a "
    "leak on close that no nng release fixes).")
elseif(nng_VERSION VERSION_LESS 1.9.0 OR nng_VERSION VERSION_GREATER_EQUAL 1.12.0)
  message(WARNING
    "nng ${nng_VERSION} (${nng_DIR}) has bug #1813 "
    "(https://github.com/nanomsg/nng/issues/1813): nng_close can hang for good when a "
    "message arrives as a pipe closes (fixed in 1.9.0, undone in 1.12.0; see docs/nng.md). "
    "faults_nng_close_test fails with it, and faults_nng_leak_test with any nng release.")
else()
  message(STATUS "nng ${nng_VERSION} (${nng_DIR}): has the fixes for #1518, #1713 and "
    "#1813, not for the leak on close (faults_nng_leak_test fails; docs/nng.md)")
endif()
