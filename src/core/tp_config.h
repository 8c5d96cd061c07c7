#ifndef TP_CONFIG_H
#define TP_CONFIG_H
#endif
