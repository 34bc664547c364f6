/* Moved to util/ref.h (the engine parses references and must include nothing from peer/).
 * This forward stays only until peer/origin.c and peer/wire.c, being rewritten elsewhere,
 * include util/ref.h themselves; then it goes. */
#pragma once
#include "util/ref.h"
