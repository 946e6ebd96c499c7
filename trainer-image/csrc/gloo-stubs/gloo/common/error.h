// Stand-in for Gloo's header: the declarations c10d needs are all in context.h.
#pragma once
#include <gloo/context.h>
