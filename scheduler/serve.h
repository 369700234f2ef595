/*
 * serve - `lmsched serve`: builds the daemon from its layers (the core, the
 * backends it holds, the front doors) and runs it until a clean shutdown.
 */
#ifndef LMSCHED_SERVE_H
#define LMSCHED_SERVE_H

/* argv[0] is "serve". Returns the process exit status (docs/cli.md). */
int serve_main(int argc, char **argv);

#endif /* LMSCHED_SERVE_H */
