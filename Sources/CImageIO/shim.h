// libpng and libjpeg-turbo (Debian: libpng-dev, libjpeg-dev).
#include <stdio.h>
#include <png.h>
#include <jpeglib.h>
#include <jerror.h>

// ---------------------------------------------------------------------------------------------
// Error-safe wrappers used by Sources/ImageCodecs/ImageIO.swift.
//
// libpng and libjpeg report errors by longjmp. Swift frames must never be jumped over, so every
// call into either library happens inside the small C functions below: each installs its own
// error handler, keeps the setjmp target in its own C frame, and turns an error into a non-zero
// return code plus a message. No libpng/libjpeg function is called from Swift directly.
// ---------------------------------------------------------------------------------------------
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SAMIO_MESSAGE_LENGTH 256

/// Samples decoded by `samio_png_decode` / `samio_jpeg_decode`, before any colour conversion.
/// `pixels` holds `height` rows of `width * channels` samples; 16-bit samples are big-endian
/// byte pairs. Free `pixels` with `samio_free`.
typedef struct {
    unsigned char *pixels;
    int width;
    int height;
    /// PNG: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA (palettes are expanded to RGB/RGBA).
    /// JPEG: 1 grey, 3 RGB (libjpeg converts YCbCr), 4 CMYK as stored (YCCK converted to CMYK).
    int channels;
    /// 8 or 16 (PNG bit depths 1, 2 and 4 are expanded to 8).
    int bit_depth;
    /// Non-zero for an interlaced PNG or a progressive JPEG (informational).
    int interlaced;
    char message[SAMIO_MESSAGE_LENGTH];
} samio_image;

typedef enum {
    SAMIO_OK = 0,
    SAMIO_CORRUPT = 1,      // the library rejected the data (truncated, bad CRC, bad marker, ...)
    SAMIO_UNSUPPORTED = 2,  // valid but not a layout this decoder converts
    SAMIO_TOO_LARGE = 3,    // more pixels than the caller allows
    SAMIO_NO_MEMORY = 4,
} samio_status;

static inline void samio_free(void *p) { free(p); }

static inline void samio_set_message(char *dst, const char *prefix, const char *msg) {
    snprintf(dst, SAMIO_MESSAGE_LENGTH, "%s%s", prefix, msg ? msg : "");
}

// ----------------------------------------- PNG -----------------------------------------------

typedef struct {
    const unsigned char *data;
    size_t size;
    size_t position;
    char *message;             // where the error handler writes
    unsigned char *out;        // growable output buffer (encoder)
    size_t out_size;
    size_t out_capacity;
    int out_failed;
} samio_png_io;

static inline void samio_png_error(png_structp png, png_const_charp msg) {
    samio_png_io *io = (samio_png_io *)png_get_error_ptr(png);
    samio_set_message(io->message, "", msg);
    png_longjmp(png, 1);
}

static inline void samio_png_warning(png_structp png, png_const_charp msg) {
    (void)png; (void)msg;  // warnings (e.g. a bad ancillary chunk) are not errors, as in PIL
}

static inline void samio_png_read(png_structp png, png_bytep dst, size_t length) {
    samio_png_io *io = (samio_png_io *)png_get_io_ptr(png);
    if (length > io->size - io->position) {
        png_error(png, "unexpected end of data (truncated file)");
    }
    memcpy(dst, io->data + io->position, length);
    io->position += length;
}

/// Decodes a PNG held in memory. Palettes become RGB (RGBA when a tRNS chunk is present), grey
/// of 1/2/4 bits becomes 8-bit grey scaled to 0…255, 16-bit samples are kept, interlacing is
/// undone, gamma/colour chunks are ignored (as PIL does). Returns a `samio_status`.
static inline int samio_png_decode(const unsigned char *data, size_t size, long long max_pixels,
                                   samio_image *out) {
    samio_png_io io;
    memset(&io, 0, sizeof io);
    io.data = data;
    io.size = size;
    io.message = out->message;
    out->pixels = NULL;
    out->message[0] = 0;

    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &io, samio_png_error, samio_png_warning);
    if (!png) { samio_set_message(out->message, "", "cannot allocate the PNG decoder"); return SAMIO_NO_MEMORY; }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        samio_set_message(out->message, "", "cannot allocate the PNG decoder");
        return SAMIO_NO_MEMORY;
    }
    // Touched between setjmp and a possible longjmp: volatile, so their values survive the jump.
    unsigned char *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    volatile int status = SAMIO_CORRUPT;

    if (setjmp(png_jmpbuf(png))) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        return status;
    }
    png_set_read_fn(png, &io, samio_png_read);
    png_read_info(png, info);

    png_uint_32 width = png_get_image_width(png, info);
    png_uint_32 height = png_get_image_height(png, info);
    int color_type = png_get_color_type(png, info);
    int depth = png_get_bit_depth(png, info);
    int interlace = png_get_interlace_type(png, info);
    if ((long long)width * (long long)height > max_pixels) {
        status = SAMIO_TOO_LARGE;
        char m[SAMIO_MESSAGE_LENGTH];
        snprintf(m, sizeof m, "%ux%u pixels exceeds the limit of %lld", (unsigned)width, (unsigned)height, max_pixels);
        png_error(png, m);
    }
    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color_type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    int passes = png_set_interlace_handling(png);
    (void)passes;
    png_read_update_info(png, info);

    int channels = png_get_channels(png, info);
    int out_depth = png_get_bit_depth(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (channels < 1 || channels > 4 || (out_depth != 8 && out_depth != 16)
        || rowbytes != (size_t)width * (size_t)channels * (size_t)(out_depth / 8)) {
        status = SAMIO_UNSUPPORTED;
        png_error(png, "unexpected sample layout after expansion");
    }
    status = SAMIO_NO_MEMORY;
    pixels = (unsigned char *)malloc(rowbytes * (size_t)height);
    rows = (png_bytep *)malloc(sizeof(png_bytep) * (size_t)height);
    if (!pixels || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < height; y++) rows[y] = pixels + (size_t)y * rowbytes;
    status = SAMIO_CORRUPT;
    png_read_image(png, rows);
    png_read_end(png, NULL);

    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    out->pixels = pixels;
    out->width = (int)width;
    out->height = (int)height;
    out->channels = channels;
    out->bit_depth = out_depth;
    out->interlaced = interlace != PNG_INTERLACE_NONE;
    return SAMIO_OK;
}

static inline void samio_png_write(png_structp png, png_bytep src, size_t length) {
    samio_png_io *io = (samio_png_io *)png_get_io_ptr(png);
    if (io->out_size + length > io->out_capacity) {
        size_t capacity = io->out_capacity ? io->out_capacity : 65536;
        while (capacity < io->out_size + length) capacity *= 2;
        unsigned char *grown = (unsigned char *)realloc(io->out, capacity);
        if (!grown) { io->out_failed = 1; png_error(png, "out of memory"); }
        io->out = grown;
        io->out_capacity = capacity;
    }
    memcpy(io->out + io->out_size, src, length);
    io->out_size += length;
}

static inline void samio_png_flush(png_structp png) { (void)png; }

/// Encodes 8-bit grey (channels 1) or RGB (channels 3) rows, `width * channels` bytes each, as a
/// PNG in memory. On success `*out_data` (free with `samio_free`) holds `*out_size` bytes.
static inline int samio_png_encode(const unsigned char *pixels, int width, int height, int channels,
                                   unsigned char **out_data, size_t *out_size, char *message) {
    *out_data = NULL;
    *out_size = 0;
    message[0] = 0;
    if (width <= 0 || height <= 0 || (channels != 1 && channels != 3)) {
        samio_set_message(message, "", "PNG encoder: bad size or channel count");
        return SAMIO_UNSUPPORTED;
    }
    samio_png_io io;
    memset(&io, 0, sizeof io);
    io.message = message;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &io, samio_png_error, samio_png_warning);
    if (!png) { samio_set_message(message, "", "cannot allocate the PNG encoder"); return SAMIO_NO_MEMORY; }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        samio_set_message(message, "", "cannot allocate the PNG encoder");
        return SAMIO_NO_MEMORY;
    }
    if (setjmp(png_jmpbuf(png))) {
        free(io.out);  // io lives in memory (its address escaped to libpng), so it is current here
        png_destroy_write_struct(&png, &info);
        return SAMIO_NO_MEMORY;
    }
    png_set_write_fn(png, &io, samio_png_write, samio_png_flush);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
                 channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    size_t stride = (size_t)width * (size_t)channels;
    for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(pixels + (size_t)y * stride));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    *out_data = io.out;
    *out_size = io.out_size;
    return SAMIO_OK;
}

// ----------------------------------------- JPEG ----------------------------------------------

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf jump;
    char *message;
    int status;
} samio_jpeg_error;

static inline void samio_jpeg_error_exit(j_common_ptr cinfo) {
    samio_jpeg_error *err = (samio_jpeg_error *)cinfo->err;
    char m[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, m);
    samio_set_message(err->message, "", m);
    longjmp(err->jump, 1);
}

/// libjpeg reports a file that ends early only as a warning and pads the image with grey; PIL
/// refuses such files ("image file is truncated"), so that warning is an error here. Other
/// corrupt-data warnings (extraneous bytes, bad restart markers) are tolerated as in PIL.
static inline void samio_jpeg_emit_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        samio_jpeg_error *err = (samio_jpeg_error *)cinfo->err;
        samio_set_message(err->message, "", "unexpected end of data (truncated file)");
        longjmp(err->jump, 1);
    }
    if (level == -1) cinfo->err->num_warnings++;
}

static inline void samio_jpeg_output_message(j_common_ptr cinfo) { (void)cinfo; }

/// Decodes a JPEG held in memory with libjpeg's defaults (integer slow DCT, fancy upsampling,
/// as PIL's decoder uses them). Greyscale stays grey, YCbCr/RGB becomes RGB, CMYK/YCCK becomes
/// CMYK samples as stored. Returns a `samio_status`.
static inline int samio_jpeg_decode(const unsigned char *data, size_t size, long long max_pixels,
                                    samio_image *out) {
    struct jpeg_decompress_struct cinfo;
    samio_jpeg_error err;
    memset(&cinfo, 0, sizeof cinfo);
    memset(&err, 0, sizeof err);
    out->pixels = NULL;
    out->message[0] = 0;
    cinfo.err = jpeg_std_error(&err.base);
    err.base.error_exit = samio_jpeg_error_exit;
    err.base.emit_message = samio_jpeg_emit_message;
    err.base.output_message = samio_jpeg_output_message;
    err.message = out->message;
    err.status = SAMIO_CORRUPT;  // in memory (its address escaped), so current after a longjmp
    unsigned char *volatile pixels = NULL;

    if (setjmp(err.jump)) {
        free(pixels);
        jpeg_destroy_decompress(&cinfo);
        return err.status;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);

    switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE: cinfo.out_color_space = JCS_GRAYSCALE; break;
    case JCS_YCbCr: case JCS_RGB: cinfo.out_color_space = JCS_RGB; break;
    case JCS_CMYK: case JCS_YCCK: cinfo.out_color_space = JCS_CMYK; break;
    default:
        err.status = SAMIO_UNSUPPORTED;
        samio_set_message(out->message, "", "unsupported JPEG colour space");
        longjmp(err.jump, 1);
    }
    if ((long long)cinfo.image_width * (long long)cinfo.image_height > max_pixels) {
        err.status = SAMIO_TOO_LARGE;
        snprintf(out->message, SAMIO_MESSAGE_LENGTH, "%ux%u pixels exceeds the limit of %lld",
                 (unsigned)cinfo.image_width, (unsigned)cinfo.image_height, max_pixels);
        longjmp(err.jump, 1);
    }
    jpeg_start_decompress(&cinfo);
    size_t stride = (size_t)cinfo.output_width * (size_t)cinfo.output_components;
    pixels = (unsigned char *)malloc(stride * (size_t)cinfo.output_height);
    if (!pixels) {
        err.status = SAMIO_NO_MEMORY;
        samio_set_message(out->message, "", "out of memory");
        longjmp(err.jump, 1);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + (size_t)cinfo.output_scanline * stride;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);

    out->pixels = pixels;
    out->width = (int)cinfo.output_width;
    out->height = (int)cinfo.output_height;
    out->channels = cinfo.output_components;
    out->bit_depth = 8;
    out->interlaced = cinfo.progressive_mode ? 1 : 0;
    jpeg_destroy_decompress(&cinfo);
    return SAMIO_OK;
}

/// JPEG output into a growable malloc'd buffer (the PNG encoder's pattern; libjpeg's own
/// jpeg_mem_dest cannot be freed reliably after an error).
typedef struct {
    struct jpeg_destination_mgr base;
    unsigned char *out;
    size_t capacity;
} samio_jpeg_destination;

static inline void samio_jpeg_init_destination(j_compress_ptr cinfo) {
    samio_jpeg_destination *d = (samio_jpeg_destination *)cinfo->dest;
    d->base.next_output_byte = d->out;
    d->base.free_in_buffer = d->capacity;
}

static inline boolean samio_jpeg_empty_buffer(j_compress_ptr cinfo) {
    samio_jpeg_destination *d = (samio_jpeg_destination *)cinfo->dest;
    unsigned char *grown = (unsigned char *)realloc(d->out, d->capacity * 2);
    if (!grown) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 0);
    d->out = grown;
    d->base.next_output_byte = grown + d->capacity;  // the whole old buffer is full
    d->base.free_in_buffer = d->capacity;
    d->capacity *= 2;
    return TRUE;
}

static inline void samio_jpeg_term_destination(j_compress_ptr cinfo) { (void)cinfo; }

/// Encodes 8-bit RGB rows (`width * 3` bytes each) as a baseline JPEG at `quality` (1...100),
/// 4:2:0 chroma (libjpeg's defaults). On success `*out_data` (free with `samio_free`) holds
/// `*out_size` bytes.
static inline int samio_jpeg_encode(const unsigned char *pixels, int width, int height, int quality,
                                    unsigned char **out_data, size_t *out_size, char *message) {
    *out_data = NULL;
    *out_size = 0;
    message[0] = 0;
    if (width <= 0 || height <= 0 || quality < 1 || quality > 100) {
        samio_set_message(message, "", "JPEG encoder: bad size or quality");
        return SAMIO_UNSUPPORTED;
    }
    struct jpeg_compress_struct cinfo;
    samio_jpeg_error err;
    samio_jpeg_destination dest;  // in memory (its address escaped), so current after a longjmp
    memset(&cinfo, 0, sizeof cinfo);
    memset(&err, 0, sizeof err);
    memset(&dest, 0, sizeof dest);
    cinfo.err = jpeg_std_error(&err.base);
    err.base.error_exit = samio_jpeg_error_exit;
    err.base.output_message = samio_jpeg_output_message;
    err.message = message;
    dest.capacity = 65536;
    dest.out = (unsigned char *)malloc(dest.capacity);
    if (!dest.out) { samio_set_message(message, "", "out of memory"); return SAMIO_NO_MEMORY; }
    dest.base.init_destination = samio_jpeg_init_destination;
    dest.base.empty_output_buffer = samio_jpeg_empty_buffer;
    dest.base.term_destination = samio_jpeg_term_destination;
    if (setjmp(err.jump)) {
        free(dest.out);
        jpeg_destroy_compress(&cinfo);
        return SAMIO_NO_MEMORY;
    }
    jpeg_create_compress(&cinfo);
    cinfo.dest = &dest.base;
    cinfo.image_width = (JDIMENSION)width;
    cinfo.image_height = (JDIMENSION)height;
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    size_t stride = (size_t)width * 3;
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(pixels + (size_t)cinfo.next_scanline * stride);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    *out_size = dest.capacity - dest.base.free_in_buffer;
    *out_data = dest.out;
    jpeg_destroy_compress(&cinfo);
    return SAMIO_OK;
}
