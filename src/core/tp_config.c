#include "core/tp_config.h"
