// Open MPI's C API (Debian: libopenmpi-dev). MPI_COMM_WORLD, the datatypes, MPI_SUM and
// MPI_IN_PLACE are C macros over Open MPI's predefined globals, which Swift cannot import; the
// inline functions below make each call the `Distributed` target needs, on the world communicator.
#include <mpi.h>

/// MPI_Init_thread asking for MPI_THREAD_SERIALIZED (only one thread calls MPI at a time); errors
/// on the world communicator are returned (the caller reports them and aborts) instead of fatal.
static inline int cmpi_init(int *provided) {
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, provided);
    if (rc != MPI_SUCCESS) return rc;
    return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}
static inline int cmpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int cmpi_success(void) { return MPI_SUCCESS; }
static inline int cmpi_rank(int *rank) { return MPI_Comm_rank(MPI_COMM_WORLD, rank); }
static inline int cmpi_size(int *size) { return MPI_Comm_size(MPI_COMM_WORLD, size); }
/// The number of ranks sharing this node (a shared-memory split of the world communicator).
static inline int cmpi_local_size(int *size) {
    MPI_Comm local;
    int rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
    if (rc != MPI_SUCCESS) return rc;
    rc = MPI_Comm_size(local, size);
    MPI_Comm_free(&local);
    return rc;
}
static inline int cmpi_allreduce_sum_float(float *buffer, int count) {
    return MPI_Allreduce(MPI_IN_PLACE, buffer, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
}
static inline int cmpi_allreduce_sum_double(double *buffer, int count) {
    return MPI_Allreduce(MPI_IN_PLACE, buffer, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}
static inline int cmpi_allreduce_max_double(double *buffer, int count) {
    return MPI_Allreduce(MPI_IN_PLACE, buffer, count, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
}
static inline int cmpi_bcast_bytes(void *buffer, int count, int root) {
    return MPI_Bcast(buffer, count, MPI_BYTE, root, MPI_COMM_WORLD);
}
static inline int cmpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }
static inline int cmpi_abort(int code) { return MPI_Abort(MPI_COMM_WORLD, code); }
static inline int cmpi_finalize(void) { return MPI_Finalize(); }
static inline int cmpi_finalized(int *flag) { return MPI_Finalized(flag); }
static inline int cmpi_error_string(int code, char *text, int *length) { return MPI_Error_string(code, text, length); }
static inline int cmpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
