// libpng and libjpeg-turbo (Debian: libpng-dev, libjpeg-dev).
#include <stdio.h>
#include <png.h>
#include <jpeglib.h>
