//! The glue between the safe [`Source`]/[`Sink`] traits and the ABI: builds instances, enters
//! the instance's span, and catches panics so that none unwinds into the host.

use crate::{
    abi::{
        AckBox, HostLogBox, HostSourceCtxBox, InstanceInfo, PluginDescriptor, PluginKind,
        PluginLibrary, PluginLibraryRef, SinkBox, SinkFfi, SinkFfi_TO, SourceBox, SourceFfi,
        SourceFfi_TO,
    },
    context::{InitContext, SourceContext},
    error::{ErrorKind, PluginError},
    reading::Reading,
    Sink, Source,
};
use abi_stable::{
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RVec},
};
use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::OnceLock,
};

static DESCRIPTORS: OnceLock<fn() -> Vec<PluginDescriptor>> = OnceLock::new();

/// Builds the library's root module. Called by [`export!`](crate::export).
pub fn library(
    name: &'static str,
    version: &'static str,
    descriptors: fn() -> Vec<PluginDescriptor>,
) -> PluginLibraryRef {
    let _ = DESCRIPTORS.set(descriptors);
    PluginLibrary {
        sdk_version: RStr::from_str(crate::abi::SDK_VERSION),
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        init: init_ffi,
        plugins: plugins_ffi,
    }
    .leak_into_prefix()
}

extern "C" fn init_ffi(host: HostLogBox) {
    let _ = catch_unwind(AssertUnwindSafe(|| crate::log::init(host)));
}

extern "C" fn plugins_ffi() -> RVec<PluginDescriptor> {
    catch_unwind(|| DESCRIPTORS.get().map(|f| f()).unwrap_or_default())
        .unwrap_or_default()
        .into()
}

/// The descriptor of source `S`.
pub fn source_descriptor<S: Source>() -> PluginDescriptor {
    PluginDescriptor {
        id: RStr::from_str(S::ID),
        kind: PluginKind::Source,
        description: RStr::from_str(S::DESCRIPTION),
        new_source: Some(new_source::<S>),
        new_sink: None,
    }
}

/// The descriptor of sink `S`.
pub fn sink_descriptor<S: Sink>() -> PluginDescriptor {
    PluginDescriptor {
        id: RStr::from_str(S::ID),
        kind: PluginKind::Sink,
        description: RStr::from_str(S::DESCRIPTION),
        new_source: None,
        new_sink: Some(new_sink::<S>),
    }
}

/// Turns a panic payload into an error.
pub(crate) fn panic_error(what: &str, payload: Box<dyn Any + Send>) -> PluginError {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    PluginError::new(
        ErrorKind::PANIC,
        format!("plugin panicked in {what}: {msg}"),
    )
}

/// Runs `f`, its panic an error; an error leaves without the library's secrets in it.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(crate::log::redacted_error).into(),
        Err(payload) => RResult::RErr(crate::log::redacted_error(panic_error(what, payload))),
    }
}

fn instance_span(info: &InstanceInfo) -> tracing::Span {
    tracing::info_span!("instance", instance = %info.instance)
}

/// Builds a source instance from the host's description. `pub` for [`crate::testing`].
pub extern "C" fn new_source<S: Source>(info: &InstanceInfo) -> RResult<SourceBox, PluginError> {
    // An instance's `log_level` may have changed since the library last asked.
    crate::log::refresh_levels(true);
    let span = instance_span(info);
    let _enter = span.enter();
    guarded("new", || {
        let inner = S::new(&InitContext::new(info.clone()))?;
        Ok(SourceFfi_TO::from_value(
            SourceShim {
                inner: Some(inner),
                info: info.clone(),
                span: span.clone(),
            },
            TD_Opaque,
        ))
    })
}

/// Builds a sink instance from the host's description.
pub extern "C" fn new_sink<S: Sink>(info: &InstanceInfo) -> RResult<SinkBox, PluginError> {
    // An instance's `log_level` may have changed since the library last asked.
    crate::log::refresh_levels(true);
    let span = instance_span(info);
    let _enter = span.enter();
    guarded("new", || {
        let inner = S::new(&InitContext::new(info.clone()))?;
        Ok(SinkFfi_TO::from_value(
            SinkShim {
                inner: Some(inner),
                opened: false,
                span: span.clone(),
            },
            TD_Opaque,
        ))
    })
}

struct SourceShim<S: Source> {
    inner: Option<S>,
    info: InstanceInfo,
    span: tracing::Span,
}

impl<S: Source> SourceFfi for SourceShim<S> {
    fn run(&mut self, ctx: HostSourceCtxBox) -> RResult<(), PluginError> {
        let _enter = self.span.enter();
        let ctx = SourceContext::new(ctx, &self.info);
        let Some(inner) = self.inner.as_mut() else {
            return RResult::RErr(PluginError::fatal(
                "instance was poisoned by an earlier panic",
            ));
        };
        let r = guarded("run", || inner.run(&ctx));
        if matches!(&r, RResult::RErr(e) if e.kind == ErrorKind::PANIC) {
            // Whatever state the panic left is not to be used again; dropping it may panic too.
            let _ = catch_unwind(AssertUnwindSafe(|| drop(self.inner.take())));
        }
        r
    }
}

impl<S: Source> Drop for SourceShim<S> {
    fn drop(&mut self) {
        let _enter = self.span.enter();
        let _ = catch_unwind(AssertUnwindSafe(|| drop(self.inner.take())));
    }
}

struct SinkShim<S: Sink> {
    inner: Option<S>,
    /// Whether [`Sink::open`] succeeded: the first write opens the instance. (It is not a
    /// method of the ABI: abi_stable refuses a library whose vtables are shorter than the
    /// host's, so a method added there would refuse every plugin built before it.)
    opened: bool,
    span: tracing::Span,
}

impl<S: Sink> SinkShim<S> {
    /// Runs `f` on the instance, inside its span; a panic becomes an error and poisons the
    /// instance (whatever state the panic left is not used again).
    fn call(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut S) -> Result<(), PluginError>,
    ) -> RResult<(), PluginError> {
        let _enter = self.span.enter();
        let Some(inner) = self.inner.as_mut() else {
            return RResult::RErr(PluginError::fatal(
                "instance was poisoned by an earlier panic",
            ));
        };
        let r = guarded(what, || f(inner));
        if matches!(&r, RResult::RErr(e) if e.kind == ErrorKind::PANIC) {
            let _ = catch_unwind(AssertUnwindSafe(|| drop(self.inner.take())));
        }
        r
    }
}

impl<S: Sink> SinkShim<S> {
    /// Opens the instance unless it is open. A failure other than a retryable one asks the
    /// host to rebuild the instance (with backoff), whatever its kind: the batch itself is not
    /// at fault, and must be neither refused nor dropped.
    fn ensure_open(&mut self) -> RResult<(), PluginError> {
        if self.opened {
            return RResult::ROk(());
        }
        match self.call("open", |inner| inner.open()) {
            RResult::ROk(()) => {
                self.opened = true;
                RResult::ROk(())
            }
            RResult::RErr(e) if e.kind.is_retryable() || e.kind == ErrorKind::PANIC => {
                RResult::RErr(e)
            }
            RResult::RErr(e) => RResult::RErr(PluginError::fatal(format!(
                "opening the sink failed: {}",
                e.message()
            ))),
        }
    }
}

impl<S: Sink> SinkFfi for SinkShim<S> {
    fn write(&mut self, batch: RSlice<'_, Reading>) -> RResult<(), PluginError> {
        if let RResult::RErr(e) = self.ensure_open() {
            return RResult::RErr(e);
        }
        self.call("write", |inner| inner.write(batch.as_slice()))
    }

    fn window(&self) -> u32 {
        let _enter = self.span.enter();
        self.inner.as_ref().map_or(1, |inner| {
            catch_unwind(AssertUnwindSafe(|| inner.window()))
                .map_or(1, |w| w.clamp(1, u32::MAX as usize) as u32)
        })
    }

    fn submit(&mut self, batch: RSlice<'_, Reading>, done: AckBox) -> RResult<(), PluginError> {
        let done = crate::context::Written::from_ffi(done);
        if let RResult::RErr(e) = self.ensure_open() {
            done.finish(Err(e));
            return RResult::ROk(());
        }
        self.call("submit", |inner| {
            inner.submit(batch.as_slice(), done);
            Ok(())
        })
    }

    fn close(&mut self) -> RResult<(), PluginError> {
        let _enter = self.span.enter();
        match self.inner.as_mut() {
            Some(inner) => guarded("close", || inner.close()),
            None => RResult::ROk(()),
        }
    }
}

impl<S: Sink> Drop for SinkShim<S> {
    fn drop(&mut self) {
        let _enter = self.span.enter();
        let _ = catch_unwind(AssertUnwindSafe(|| drop(self.inner.take())));
    }
}
