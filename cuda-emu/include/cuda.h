// Shim: everything lives in the force-included frostgrad_cuda_emu.h.
#pragma once
#include "frostgrad_cuda_emu.h"
