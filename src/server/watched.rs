//! `WatchedInput`: an input protocol that remembers whether any read failed.
//!
//! The generated processors answer a call whose arguments could not be decoded (a stalled
//! client, an oversized or malformed field) with a Thrift exception and report success, leaving
//! the connection positioned in the middle of a message. The server asks `WatchedInput` after
//! every call and closes such a connection instead of reading garbage as the next message.

use std::cell::Cell;
use std::rc::Rc;

use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TSetIdentifier, TStructIdentifier, TType,
};

/// Wraps `P`, recording the first read error in a shared flag.
pub struct WatchedInput<P> {
    inner: P,
    failed: Rc<Cell<Option<String>>>,
}

impl<P: TInputProtocol> WatchedInput<P> {
    pub fn new(inner: P) -> (Self, Rc<Cell<Option<String>>>) {
        let failed = Rc::new(Cell::new(None));
        (
            Self {
                inner,
                failed: failed.clone(),
            },
            failed,
        )
    }

    fn watch<T>(&self, result: thrift::Result<T>) -> thrift::Result<T> {
        if let Err(e) = &result {
            let first = self.failed.take().unwrap_or_else(|| e.to_string());
            self.failed.set(Some(first));
        }
        result
    }
}

macro_rules! delegate {
    ($($name:ident -> $ty:ty),* $(,)?) => {
        $(fn $name(&mut self) -> thrift::Result<$ty> {
            let result = self.inner.$name();
            self.watch(result)
        })*
    };
}

impl<P: TInputProtocol> TInputProtocol for WatchedInput<P> {
    delegate! {
        read_message_begin -> TMessageIdentifier,
        read_message_end -> (),
        read_struct_begin -> Option<TStructIdentifier>,
        read_struct_end -> (),
        read_field_begin -> TFieldIdentifier,
        read_field_end -> (),
        read_bool -> bool,
        read_bytes -> Vec<u8>,
        read_i8 -> i8,
        read_i16 -> i16,
        read_i32 -> i32,
        read_i64 -> i64,
        read_double -> f64,
        read_uuid -> uuid::Uuid,
        read_string -> String,
        read_list_begin -> TListIdentifier,
        read_list_end -> (),
        read_set_begin -> TSetIdentifier,
        read_set_end -> (),
        read_map_begin -> TMapIdentifier,
        read_map_end -> (),
        read_byte -> u8,
        skip_binary -> (),
    }

    fn skip(&mut self, field_type: TType) -> thrift::Result<()> {
        let result = self.inner.skip(field_type);
        self.watch(result)
    }

    fn min_serialized_size(&self, field_type: TType) -> usize {
        self.inner.min_serialized_size(field_type)
    }
}
