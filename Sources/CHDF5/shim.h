// HDF5 C API (Debian: libhdf5-dev, serial flavour).
// HDF5's predefined type ids (H5T_NATIVE_FLOAT, …) and H5P_DEFAULT are C macros that Swift cannot
// import; these inline functions expose them.
#include <hdf5.h>

static inline hid_t chdf5_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t chdf5_native_uint8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t chdf5_native_int32(void) { return H5T_NATIVE_INT32; }
static inline hid_t chdf5_native_int64(void) { return H5T_NATIVE_INT64; }
static inline hid_t chdf5_ieee_f32le(void) { return H5T_IEEE_F32LE; }
static inline hid_t chdf5_c_s1(void) { return H5T_C_S1; }
static inline hid_t chdf5_p_default(void) { return H5P_DEFAULT; }
static inline hid_t chdf5_p_dataset_create(void) { return H5P_DATASET_CREATE; }
static inline hid_t chdf5_s_all(void) { return H5S_ALL; }
static inline hsize_t chdf5_s_unlimited(void) { return H5S_UNLIMITED; }

// Added for the feature cache (Sources/HDF5/HDF5.swift): more predefined types, property-list
// classes, file-access flags and the default error stack, all C macros.
static inline hid_t chdf5_native_double(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t chdf5_native_uint16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t chdf5_std_u8le(void) { return H5T_STD_U8LE; }
static inline hid_t chdf5_std_i32le(void) { return H5T_STD_I32LE; }
static inline hid_t chdf5_std_i64le(void) { return H5T_STD_I64LE; }
static inline hid_t chdf5_ieee_f64le(void) { return H5T_IEEE_F64LE; }
static inline hid_t chdf5_p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t chdf5_p_file_create(void) { return H5P_FILE_CREATE; }
static inline hid_t chdf5_e_default(void) { return H5E_DEFAULT; }
static inline unsigned chdf5_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline unsigned chdf5_acc_rdwr(void) { return H5F_ACC_RDWR; }
static inline unsigned chdf5_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline unsigned chdf5_acc_excl(void) { return H5F_ACC_EXCL; }
/// Turns off HDF5's automatic printing of its error stack (errors become Swift throws instead).
/// First, before anything initialises the library, H5dont_atexit: HDF5's exit handler closes
/// files still open, and crashes (SIGSEGV in H5F__close_cb, 1.10.8) on a file whose close already
/// failed, e.g. on a full disk. Every file the toolkit writes is flushed and closed explicitly.
static inline void chdf5_silence_errors(void) {
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}
/// IEEE half precision, little-endian (1 sign, 5 exponent, 10 mantissa bits, bias 15): the layout
/// numpy calls float16 and h5py maps back to it. HDF5 1.10 predefines no such type.
static inline hid_t chdf5_create_f16le(void) {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0) return t;
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

// Added for the cache's checksums (HDF5.swift): the Fletcher-32 filter's id and the undefined
// file address H5Dget_chunk_info_by_coord reports for a chunk with no file space.
static inline int chdf5_z_filter_fletcher32(void) { return H5Z_FILTER_FLETCHER32; }
static inline haddr_t chdf5_haddr_undef(void) { return HADDR_UNDEF; }
