#include <git2.h>
#include <git2/sys/stream.h>
#include <git2/sys/repository.h>
