// OpenBLAS's CBLAS interface (Debian: libopenblas-dev; header under openblas-pthread/).
#include <cblas.h>

// Not declared by cblas.h, exported by OpenBLAS's pthreads build (driver/others/openblas_env.c,
// blas_server.c): re-read the OPENBLAS_* environment, stop the thread pool (it restarts on the
// next threaded call with the settings read), and the spin timeout in effect (log2 of cycles).
void openblas_read_env(void);
int blas_thread_shutdown_(void);
int openblas_thread_timeout(void);
