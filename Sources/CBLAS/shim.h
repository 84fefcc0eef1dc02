// OpenBLAS's CBLAS interface (Debian: libopenblas-dev; header under openblas-pthread/).
#include <cblas.h>
