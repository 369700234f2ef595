/*
 * fs - files for tests: read one whole, look for text in it, write one
 * with a given mode, read a number from it (port and pid files), show its
 * end, and remove a temporary directory tree.
 *
 * Threads: any.
 */
#ifndef LMSCHED_KIT_FS_H
#define LMSCHED_KIT_FS_H

#include <stdbool.h>
#include <stdio.h>

/* The whole file, NUL-terminated (malloc'd, the caller frees), or NULL. */
char *kit_fs_read(const char *path);

/* Whether the file contains needle (false if unreadable). */
bool kit_fs_contains(const char *path, const char *needle);

/* Lines of the file that contain needle, -1 if unreadable. */
int kit_fs_count_lines(const char *path, const char *needle);

/* Writes content to path (replacing it) and then sets its mode exactly
 * (fchmod: the umask does not apply). Returns 0 or -1. */
int kit_fs_write(const char *path, const char *content, unsigned mode);

/* The integer at the start of the file (a port or pid file). Returns 0,
 * or -1 if the file is absent or holds no number yet. */
int kit_fs_read_long(const char *path, long *out);

/* Prints the last `lines` lines of the file to out, under a header line;
 * nothing if it is unreadable. */
void kit_fs_tail(const char *path, int lines, FILE *out);

/* Removes dir and everything under it (symbolic links are removed, not
 * followed). Returns 0 or -1. */
int kit_fs_rm_tree(const char *dir);

#endif
