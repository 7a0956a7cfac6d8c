#ifndef TANDEM_CZMQ_SHIM_H
#define TANDEM_CZMQ_SHIM_H
#include <zmq.h>
#endif
