//! Direct Node-API callbacks for the hottest tensor functions.
//!
//! napi-rs wraps every `#[napi]` function in per-call bookkeeping (a borrow
//! scope with a heap allocation and several thread-local pushes) that costs
//! about 60 ns, a tenth of a small tensor operation. For the functions listed
//! with `fast_exports!`, a plain callback converts the same arguments with the
//! same napi-rs conversions, calls the same Rust function, and replaces the
//! napi-rs export of that name when the module loads. The `#[napi]` declaration
//! stays the single definition: it gives the function its TypeScript type in
//! index.d.ts, and the compiler checks the listed argument types against it.

use napi::bindgen_prelude::{FromNapiValue, JsError, ToNapiValue};
use napi::{sys, Env, Error, JsValue, Result};
use napi_derive::napi;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Most arguments a fast function takes; missing ones read as `undefined`.
pub const MAX_ARGS: usize = 6;

/// One export: its Rust name in UpperCamelCase (the JS name but for the first letter)
/// and its callback.
pub struct Export {
    pub name: &'static str,
    pub callback: unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value,
}

/// The arguments of one call, converted in order.
pub struct Args {
    env: sys::napi_env,
    values: [sys::napi_value; MAX_ARGS],
    next: usize,
}

impl Args {
    /// # Safety
    /// Only inside the callback that received the arguments, with its live env.
    pub unsafe fn next<T: FromNapiValue>(&mut self) -> Result<T> {
        let value = self.values[self.next];
        self.next += 1;
        unsafe { T::from_napi_value(self.env, value) }
    }

    pub fn env(&self) -> Env {
        Env::from_raw(self.env)
    }
}

/// Runs one fast call: reads the arguments, runs `body`, converts its result or throws its
/// error. A panic becomes a JS error, as in napi-rs.
///
/// # Safety
/// Only as the body of a Node-API callback, with the `env` and `info` it was given.
pub unsafe fn call<R: ToNapiValue>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
    body: impl FnOnce(&mut Args) -> Result<R>,
) -> sys::napi_value {
    let mut args = Args {
        env,
        values: [std::ptr::null_mut(); MAX_ARGS],
        next: 0,
    };
    let mut argc = MAX_ARGS;
    let status = unsafe {
        sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            args.values.as_mut_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    let result = if status == sys::Status::napi_ok {
        catch_unwind(AssertUnwindSafe(|| {
            body(&mut args).and_then(|r| unsafe { R::to_napi_value(env, r) })
        }))
        .unwrap_or_else(|payload| Err(Error::from_reason(crate::convert::panic_detail(payload.as_ref()))))
    } else {
        Err(Error::from_reason("could not read the arguments"))
    };
    match result {
        Ok(value) => value,
        Err(error) => {
            unsafe { JsError::from(error).throw_into(env) };
            std::ptr::null_mut()
        }
    }
}

/// `fast_exports!(NAME = [function[env](Type, ...), function(Type, ...)])` defines
/// `NAME: &[Export]`, one direct callback per listed `#[napi]` function. `[env]` marks
/// functions whose first parameter is `Env`.
macro_rules! fast_exports {
    ($table:ident = [ $( $f:ident $([$env:ident])? ( $($ty:ty),* ) ),* $(,)? ]) => { paste::paste! {
        $(
            #[allow(non_snake_case)]
            unsafe extern "C" fn [<fast_ $f>](
                env: napi::sys::napi_env,
                info: napi::sys::napi_callback_info,
            ) -> napi::sys::napi_value {
                unsafe {
                    $crate::fast::call(env, info, |args| {
                        $f($(args.$env(),)? $(args.next::<$ty>()?),*)
                    })
                }
            }
        )*
        pub(crate) const $table: &[$crate::fast::Export] = &[
            $( $crate::fast::Export { name: stringify!([<$f:camel>]), callback: [<fast_ $f>] } ),*
        ];
    } };
}
pub(crate) use fast_exports;

/// Every binding catches panics and throws them as errors naming the operation
/// (`convert::guarded`, `call`), so the default hook's report on stderr, with a
/// libtorch backtrace, would only repeat that error. `ACCELERATE_DEBUG_PANICS=1` keeps it.
fn quiet_panics() {
    if std::env::var_os("ACCELERATE_DEBUG_PANICS").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
}

/// Replaces the napi-rs exports of the fast functions with their direct callbacks.
#[napi(module_exports)]
pub fn install_fast_exports(env: Env, exports: napi::bindgen_prelude::Object) -> Result<()> {
    quiet_panics();
    let tables = [
        crate::tensor_ops::FAST_TABLE,
        crate::tensor_ops::FAST_EXTRA,
        crate::tensor_api::FAST,
        crate::tensor::FAST,
    ];
    for export in tables.iter().flat_map(|t| t.iter()) {
        let mut name = export.name.to_string();
        name[..1].make_ascii_lowercase();
        let name = std::ffi::CString::new(name).map_err(|e| Error::from_reason(e.to_string()))?;
        let mut function = std::ptr::null_mut();
        // SAFETY: the callback has the Node-API callback signature.
        unsafe {
            napi::check_status!(sys::napi_create_function(
                env.raw(),
                name.as_ptr(),
                name.as_bytes().len() as isize,
                Some(export.callback),
                std::ptr::null_mut(),
                &mut function,
            ))?;
            napi::check_status!(sys::napi_set_named_property(
                env.raw(),
                exports.raw(),
                name.as_ptr(),
                function
            ))?;
        }
    }
    Ok(())
}
