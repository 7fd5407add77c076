//! The Khronos validation layer, and a debug messenger that records what it says.
//!
//! Tests turn validation on and fail on any message of warning or error severity; in normal use
//! the messages also go to the `log` crate.

use std::ffi::{c_void, CStr};
use std::sync::{Arc, Mutex, PoisonError};

use ash::vk;

/// The layer's name.
pub(crate) const LAYER_NAME: &CStr = c"VK_LAYER_KHRONOS_validation";

/// What the validation layer reported: warnings and errors, in order.
///
/// A cheap handle (clones share the record) that stays valid after the allocator and its devices
/// are dropped, so that messages printed while devices are destroyed (leaked objects) are seen
/// too.
#[derive(Debug, Clone, Default)]
pub struct ValidationLog {
    messages: Arc<Mutex<Vec<String>>>,
}

impl ValidationLog {
    /// The Khronos validation layer's name, for `VkInstanceCreateInfo::ppEnabledLayerNames`.
    pub const LAYER_NAME: &'static CStr = LAYER_NAME;

    /// The settings of a debug messenger that records warnings and errors of every type into
    /// this log: for an instance you create yourself (chain it into `VkInstanceCreateInfo`, and
    /// pass it to `vkCreateDebugUtilsMessengerEXT`), before lava-flow adopts a device of it
    /// ([`RawDevice::validation_log`](crate::RawDevice::validation_log)).
    ///
    /// The structure's user data points into this log's shared record: keep a clone of the log
    /// alive until the messenger and the instance are destroyed.
    pub fn messenger_create_info(&self) -> vk::DebugUtilsMessengerCreateInfoEXT<'static> {
        messenger_info(self)
    }

    /// Removes and returns every message recorded so far.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.messages.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The messenger's settings: warnings and errors of every type go to [`callback`].
pub(crate) fn messenger_info(log: &ValidationLog) -> vk::DebugUtilsMessengerCreateInfoEXT<'static> {
    vk::DebugUtilsMessengerCreateInfoEXT::default()
        .message_severity(
            vk::DebugUtilsMessageSeverityFlagsEXT::WARNING | vk::DebugUtilsMessageSeverityFlagsEXT::ERROR,
        )
        .message_type(
            vk::DebugUtilsMessageTypeFlagsEXT::GENERAL
                | vk::DebugUtilsMessageTypeFlagsEXT::VALIDATION
                | vk::DebugUtilsMessageTypeFlagsEXT::PERFORMANCE,
        )
        .pfn_user_callback(Some(callback))
        // The pointer stays valid while the instance lives: `Instance` keeps the `Arc`'s
        // allocation alive (it owns a clone of the log) until after vkDestroyInstance.
        .user_data(Arc::as_ptr(&log.messages) as *mut c_void)
}

/// Records one message. Never panics (a panic cannot unwind through the driver).
unsafe extern "system" fn callback(
    severity: vk::DebugUtilsMessageSeverityFlagsEXT,
    kind: vk::DebugUtilsMessageTypeFlagsEXT,
    data: *const vk::DebugUtilsMessengerCallbackDataEXT<'_>,
    user_data: *mut c_void,
) -> vk::Bool32 {
    // SAFETY: the layer passes a valid callback-data struct for the duration of the call.
    let Some(data) = (unsafe { data.as_ref() }) else {
        return vk::FALSE;
    };
    let message = if data.p_message.is_null() {
        "(no message)".to_owned()
    } else {
        // SAFETY: `p_message` is a NUL-terminated string valid for the duration of the call.
        unsafe { CStr::from_ptr(data.p_message) }.to_string_lossy().into_owned()
    };
    let text = format!("[{severity:?} {kind:?}] {message}");
    log::warn!("Vulkan validation: {text}");
    let messages = user_data.cast_const().cast::<Mutex<Vec<String>>>();
    // SAFETY: `user_data` is the `Arc<Mutex<Vec<String>>>` allocation set in `messenger_info`,
    // kept alive by the instance's `ValidationLog` clone (see there).
    if let Some(messages) = unsafe { messages.as_ref() } {
        messages.lock().unwrap_or_else(PoisonError::into_inner).push(text);
    }
    vk::FALSE
}

impl ValidationLog {
    /// Records a message that did not come from the layer (used by tests of this module).
    #[cfg(test)]
    pub(crate) fn record(&self, message: &str) {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner).push(message.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_drains_the_shared_record() {
        let log = ValidationLog::default();
        let clone = log.clone();
        log.record("one");
        assert_eq!(clone.take(), vec!["one".to_owned()]);
        assert!(log.take().is_empty());
    }
}
