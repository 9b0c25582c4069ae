//! `libcoaps_ingress.so`: the `coaps-ingress` source alone (the code is in `plugins/coaps`). One library
//! per end of the link, so that a process loads only its own end: the Pi does not map the
//! server's half, nor the server the Pi's.

gateway_sdk::export!(sources: [coaps::Ingress]);
