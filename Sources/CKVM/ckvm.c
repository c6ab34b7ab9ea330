// CKVM is header-only; this file exists so the package manager builds the target.
#include "ckvm.h"
