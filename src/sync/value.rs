//! [`Value<T>`] and [`Array<T>`]: plain data in shared memory, each with its own robust lock, like
//! Python's `multiprocessing.Value` and `multiprocessing.Array`.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use bytemuck::Pod;

use super::lock::guard_result;
use super::raw_lock::{Acquired, LockFail, Nesting, RawLock};
use crate::error::{Error, LockResult, Result};
use crate::region::shared::Shared;
use crate::region::{layout_hash, Layout, Region, RegionHandle, ShmSafe, DEFAULT_OPEN_TIMEOUT};

#[repr(C)]
pub(crate) struct RawValue<T> {
    lock: RawLock,
    value: UnsafeCell<T>,
}

// Generic, so pinned for two shapes: the lock (16 bytes, 8-aligned) first, then the value, the whole
// padded to the lock's alignment.
const _: () = assert!(std::mem::size_of::<RawValue<u64>>() == 24);
const _: () = assert!(std::mem::size_of::<RawValue<[u8; 3]>>() == 24);

// SAFETY: RawLock is ShmSafe; T: Pod accepts any bit pattern and has no pointers; the value is mutated
// only through the UnsafeCell, by the thread holding `lock`.
unsafe impl<T: Pod> ShmSafe for RawValue<T> {}

/// A `T` in shared memory with a robust lock, like Python's `multiprocessing.Value`.
///
/// [`get`](Value::get) and [`set`](Value::set) take the lock for one read or write; [`lock`](Value::lock)
/// holds it across a read-modify-write. `T` is any [`bytemuck::Pod`] type: plain bytes, no pointers, so
/// whatever another process wrote is still a valid `T`.
///
/// # Examples
/// ```
/// let v = mproc::Value::new(0u64)?;
/// *v.lock().unwrap() += 5;
/// assert_eq!(v.get(), 5);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Value<T: Pod> {
    shared: Shared<RawValue<T>>,
}

impl<T: Pod> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            shared: self.shared.clone(),
        }
    }
}

impl<T: Pod> Value<T> {
    fn layout() -> Layout {
        Shared::<RawValue<T>>::layout(std::any::type_name::<RawValue<T>>())
    }

    fn init(initial: T) -> impl Fn(&RawValue<T>) {
        move |raw| {
            // SAFETY: called once, before the region is published: no other thread or process can
            // access the value yet.
            unsafe { *raw.value.get() = initial }
        }
    }

    /// Creates an anonymous value.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn new(initial: T) -> Result<Self> {
        Ok(Value {
            shared: Shared::create(Self::layout(), None, false, Self::init(initial))?,
        })
    }

    /// Creates a value under `name` (removed when this handle is dropped in this process).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`].
    pub fn create(name: &str, initial: T) -> Result<Self> {
        Ok(Value {
            shared: Shared::create(Self::layout(), Some(name), false, Self::init(initial))?,
        })
    }

    /// Opens the value `name`, or creates a persistent one holding `initial` if none exists (remove it
    /// with [`Region::unlink`]). Concurrent callers agree on one value.
    ///
    /// # Errors
    /// As [`Value::open`].
    pub fn open_or_create(name: &str, initial: T) -> Result<Self> {
        Ok(Value {
            shared: Shared::open_or_create(name, Self::layout(), true, Self::init(initial))?,
        })
    }

    /// Opens the value `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::TypeMismatch`] if it holds another type, or another validation error.
    pub fn open(name: &str) -> Result<Self> {
        Ok(Value {
            shared: Shared::open(name, Self::layout())?,
        })
    }

    /// A handle for another process; see [`RegionHandle`].
    pub fn handle(&self) -> RegionHandle {
        self.shared.handle()
    }

    /// Re-attaches from a handle.
    ///
    /// # Errors
    /// [`Error::StaleHandle`] or a validation error.
    pub fn from_handle(handle: &RegionHandle) -> Result<Self> {
        Ok(Value {
            shared: Shared::from_handle(handle, Self::layout())?,
        })
    }

    /// Holds the value's lock.
    ///
    /// # Panics
    /// If this thread holds it already (a guard alive, then `lock`, `get` or `set`): the lock is
    /// not reentrant, and waiting would never end.
    ///
    /// # Errors
    /// [`OwnerDied`](crate::OwnerDied) with the guard if the previous holder died; the value is whatever
    /// it last wrote.
    #[inline]
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        let raw = &*self.shared;
        let region = self.shared.region().file_key();
        let a = lock_or_panic(&raw.lock, region, "Value");
        guard_result(
            ValueGuard {
                raw,
                region,
                _not_send: PhantomData,
            },
            a,
        )
    }

    /// Reads the value under the lock. A dead previous holder is not reported here (use
    /// [`lock`](Value::lock) for that): a `Pod` value is always a valid `T`.
    ///
    /// # Panics
    /// As [`lock`](Value::lock), if this thread holds the lock.
    pub fn get(&self) -> T {
        *self.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the value under the lock.
    pub fn set(&self, v: T) {
        *self.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

/// Holds a [`Value`]'s lock and gives access to the value.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Pod> {
    raw: &'a RawValue<T>,
    /// The value's region ([`Region::file_key`]), listed in [`HELD`] while the guard lives.
    region: (u64, u64),
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this thread holds the value's lock, so no cooperating thread writes it; T: Pod.
        unsafe { &*self.raw.value.get() }
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference handed out by the guard.
        unsafe { &mut *self.raw.value.get() }
    }
}

impl<T: Pod> Drop for ValueGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        held_by_this_thread(self.region, false);
        // SAFETY: the guard exists only while its (non-Send) thread holds the lock; dropped once.
        unsafe { self.raw.lock.unlock() }
    }
}

/// Where an array's elements start in its payload: after the lock, on their own cache line.
const ARRAY_DATA: usize = 64;

#[repr(C)]
pub(crate) struct RawArrayHead {
    lock: RawLock,
}

const _: () = assert!(std::mem::size_of::<RawArrayHead>() == 16);
const _: () = assert!(std::mem::size_of::<RawArrayHead>() <= ARRAY_DATA);

// SAFETY: a RawLock; any bit pattern is valid.
unsafe impl ShmSafe for RawArrayHead {}

/// A fixed-length `[T]` in shared memory with a robust lock, like Python's `multiprocessing.Array`.
///
/// The length is fixed at creation and taken, on open, from the region's validated size — never from
/// bytes another process could rewrite.
///
/// # Examples
/// ```
/// let a = mproc::Array::from_slice(&[1.0f64, 2.0, 3.0])?;
/// a.lock().unwrap()[1] = 20.0;
/// assert_eq!(a.to_vec(), vec![1.0, 20.0, 3.0]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Array<T: Pod> {
    shared: Shared<RawArrayHead>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            shared: self.shared.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Array<T> {
    const ALIGN_OK: () = assert!(
        std::mem::align_of::<T>() <= ARRAY_DATA,
        "element alignment above 64"
    );

    fn layout(len: Option<usize>) -> Result<Layout> {
        #[allow(clippy::let_unit_value)]
        let _ = Self::ALIGN_OK;
        let name = std::any::type_name::<Array<T>>();
        let size = match len {
            None => None,
            Some(n) => Some(
                n.checked_mul(std::mem::size_of::<T>())
                    .and_then(|b| b.checked_add(ARRAY_DATA))
                    // An overflow is the caller's length, not a mismatch with anything (it said
                    // "expected 18446744073709551615, found <len>" until 2026-12-03).
                    .ok_or_else(|| Error::SizeOverflow {
                        what: format!(
                            "an array of {n} elements of {} bytes",
                            std::mem::size_of::<T>()
                        )
                        .into(),
                    })?,
            ),
        };
        let hash = layout_hash(name, std::mem::size_of::<T>(), std::mem::align_of::<T>());
        Ok(Layout {
            type_name: name,
            hash,
            size,
        })
    }

    /// Creates the array with `len` elements, copying `data` in if given; a fresh region is zeroed by
    /// the kernel, so an array of zeroes needs no copy at all.
    fn create_in(name: Option<&str>, len: usize, data: Option<&[T]>) -> Result<Self> {
        let layout = Self::layout(Some(len))?;
        let region = Region::create_with(layout, name, false, |r| {
            if let Some(data) = data {
                debug_assert_eq!(data.len(), len);
                // SAFETY: the payload is ARRAY_DATA + len * size_of::<T>() bytes (the layout size), its
                // start is page-aligned + 128, so ARRAY_DATA is aligned for T (align <= 64); nobody else
                // can see the region before it is published.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        r.as_ptr().add(ARRAY_DATA).cast::<T>(),
                        len,
                    )
                };
            }
            Ok(())
        })?;
        Self::wrap(region)
    }

    fn wrap(region: Region) -> Result<Self> {
        let bytes = region
            .len()
            .checked_sub(ARRAY_DATA)
            .ok_or(Error::Truncated {
                needed: ARRAY_DATA as u64,
                actual: region.len() as u64,
            })?;
        let size = std::mem::size_of::<T>().max(1);
        if bytes % size != 0 {
            return Err(Error::SizeMismatch {
                expected: (bytes / size * size) as u64,
                found: bytes as u64,
            });
        }
        let len = if std::mem::size_of::<T>() == 0 {
            0
        } else {
            bytes / size
        };
        let shared = Shared::wrap_region(region)?;
        Ok(Array {
            shared,
            len,
            _t: PhantomData,
        })
    }

    /// Creates an anonymous array of `len` zeroes.
    ///
    /// # Errors
    /// [`Error::SizeOverflow`] if `len` elements do not fit in the address space; [`Error::Os`] if
    /// shared memory cannot be created.
    pub fn new(len: usize) -> Result<Self> {
        Self::create_in(None, len, None)
    }

    /// Creates an anonymous array holding a copy of `data`.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn from_slice(data: &[T]) -> Result<Self> {
        Self::create_in(None, data.len(), Some(data))
    }

    /// Creates an array of `len` zeroes under `name` (removed when this handle is dropped here).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`], [`Error::SizeOverflow`] (as for
    /// [`Array::new`]).
    pub fn create(name: &str, len: usize) -> Result<Self> {
        Self::create_in(Some(name), len, None)
    }

    /// Opens the array `name`; its length comes from the region's size.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::TypeMismatch`] for another element type, or a validation error.
    pub fn open(name: &str) -> Result<Self> {
        Self::wrap(Region::open_with(
            name,
            Self::layout(None)?,
            DEFAULT_OPEN_TIMEOUT,
        )?)
    }

    /// A handle for another process.
    pub fn handle(&self) -> RegionHandle {
        self.shared.handle()
    }

    /// Re-attaches from a handle.
    ///
    /// # Errors
    /// [`Error::StaleHandle`] or a validation error.
    pub fn from_handle(handle: &RegionHandle) -> Result<Self> {
        Self::wrap(Region::open_handle(handle, Self::layout(None)?)?)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Holds the array's lock and gives access to the elements.
    ///
    /// # Panics
    /// If this thread holds it already (a guard alive, then `lock`, `get`, `set` or `to_vec`).
    ///
    /// # Errors
    /// [`OwnerDied`](crate::OwnerDied) with the guard if the previous holder died.
    #[inline]
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        let a = lock_or_panic(&self.shared.lock, self.shared.region().file_key(), "Array");
        guard_result(
            ArrayGuard {
                array: self,
                _not_send: PhantomData,
            },
            a,
        )
    }

    /// Element `i` read under the lock, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<T> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(i)
            .copied()
    }

    /// Writes element `i` under the lock.
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing.
    #[track_caller]
    pub fn set(&self, i: usize, v: T) {
        self.lock().unwrap_or_else(|e| e.into_inner())[i] = v;
    }

    /// A copy of all elements, taken under the lock.
    pub fn to_vec(&self) -> Vec<T> {
        self.lock().unwrap_or_else(|e| e.into_inner()).to_vec()
    }

    fn data(&self) -> *mut T {
        // In bounds: the payload holds ARRAY_DATA + len * size_of::<T>() bytes (checked in `wrap`).
        self.shared
            .region()
            .as_ptr()
            .wrapping_add(ARRAY_DATA)
            .cast::<T>()
    }
}

/// Holds an [`Array`]'s lock and derefs to its elements.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: Pod> {
    array: &'a Array<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `data()..+len` lies in the mapping (checked in `wrap`) and is aligned for T; the array
        // keeps the mapping alive for the guard's lifetime; this thread holds the lock; T: Pod.
        unsafe { std::slice::from_raw_parts(self.array.data(), self.array.len) }
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes this the only slice the guard hands out.
        unsafe { std::slice::from_raw_parts_mut(self.array.data(), self.array.len) }
    }
}

impl<T: Pod> Drop for ArrayGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        held_by_this_thread(self.array.shared.region().file_key(), false);
        // SAFETY: the guard exists only while its (non-Send) thread holds the lock; dropped once.
        unsafe { self.array.shared.lock.unlock() }
    }
}

macro_rules! pod_handle_impls {
    ($ty:ident, $guard:ident) => {
        crate::region::shared::serde_as_handle!([T: Pod] $ty<T>);

        impl<T: Pod> std::fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("region", &self.handle())
                    .finish()
            }
        }

        impl<T: Pod + std::fmt::Debug> std::fmt::Debug for $guard<'_, T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&**self, f)
            }
        }
    };
}
pod_handle_impls!(Value, ValueGuard);
pod_handle_impls!(Array, ArrayGuard);

/// Takes `lock` with no deadline; panics (naming `what`) if this thread already holds it, where
/// `std::sync::Mutex` may deadlock: Python's `Value` and `Array` take an `RLock`, so ported code
/// that calls `get` or `set` while it holds the guard of `lock` would otherwise hang for good.
///
/// Whether this thread holds the lock is told by [`HELD`], not by the lock's word: a word naming this
/// thread that no guard of this thread accounts for is garbage, taken over like a dead holder's (found
/// by review: any process that could write the region could forge this thread's identity into the
/// word and make every `get` of ours panic). Only while this thread's thread-locals are being
/// destroyed (a `get` in the drop of a thread-local), when [`HELD`] may be gone, is the word the
/// judge, as it was before the list.
#[track_caller]
fn lock_or_panic(lock: &RawLock, region: (u64, u64), what: &str) -> Acquired {
    let held = with_held(|h| h.contains(&region));
    let nesting = match held {
        Some(true) => already_held(what),
        Some(false) => Nesting::NeverHeld,
        None => Nesting::MayHold,
    };
    let a = loop {
        // Untimed: never `TimedOut`; the loop only spells that out without a panic.
        match lock.lock_as(None, nesting) {
            Ok(a) => break a,
            Err(LockFail::WouldDeadlock) => already_held(what),
            Err(LockFail::TimedOut) => {}
        }
    };
    held_by_this_thread(region, true);
    a
}

#[track_caller]
fn already_held(what: &str) -> ! {
    panic!(
        "{what}: this thread already holds its lock (get, set and lock while a guard of it is \
         alive): use the guard"
    )
}

/// The regions of the `Value`s and `Array`s whose lock a thread holds through a guard, and the thread
/// they are listed for (see [`with_held`]).
struct Held {
    tid: u32,
    regions: Vec<(u64, u64)>,
}

thread_local! {
    /// This thread's [`Held`] (guards are not `Send`, so each is dropped on the thread that listed it).
    /// By the region's file ([`Region::file_key`]), not address: one object mapped twice (opened
    /// again by name) is one lock. Not by the header's id either: any writer of the file can rewrite
    /// it between two opens, and the second mapping's guard then took over the lock this thread held
    /// through the first, two `&mut` to one value (found by review).
    static HELD: std::cell::RefCell<Held> = const {
        std::cell::RefCell::new(Held { tid: 0, regions: Vec::new() })
    };
}

/// Calls `f` with the regions this thread holds guards of. A child of `fork(2)` inherits the list of
/// the thread that forked, whose guards it never holds: the locks name the parent's thread, and they
/// are released when the parent drops its guards. So the list counts only for the thread it was made
/// by (`proc::current` is reset in a forked child); found by review: a forked child's `get` panicked
/// with "already holds its lock" while its parent held a guard, where it used to wait for it.
///
/// `None` once this thread's [`HELD`] was destroyed (thread-locals are destroyed in the reverse order
/// of their first use, so the drop of one made before this thread's first guard runs after it; found
/// by review: `HELD.with` panicked there, and a panic in a thread-local's drop aborts the process).
fn with_held<R>(f: impl FnOnce(&mut Vec<(u64, u64)>) -> R) -> Option<R> {
    let me = crate::sys::proc::current().tid;
    HELD.try_with(|h| {
        let mut h = h.borrow_mut();
        if h.tid != me {
            h.tid = me;
            h.regions.clear();
        }
        f(&mut h.regions)
    })
    .ok()
}

/// Lists (`true`) or unlists the region of a guard of this thread (nothing once [`HELD`] is gone).
fn held_by_this_thread(region: (u64, u64), held: bool) {
    let _ = with_held(|h| {
        if held {
            h.push(region);
        } else if let Some(i) = h.iter().rposition(|&r| r == region) {
            h.swap_remove(i);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length whose bytes overflow is `SizeOverflow`, from `Array::new` and from the region under it
    /// alike; it was a `SizeMismatch` "expected 18446744073709551615".
    #[test]
    fn an_array_too_large_for_the_address_space_is_size_overflow() {
        assert!(matches!(
            Array::<u64>::new(usize::MAX / 4),
            Err(Error::SizeOverflow { .. })
        ));
        assert!(matches!(
            Array::<u8>::new(usize::MAX / 2),
            Err(Error::SizeOverflow { .. })
        ));
    }

    /// Found by review: `get` while this thread held the guard waited for itself for good (Python's
    /// `Value` takes an `RLock`, so ported code does this); it panics now.
    #[test]
    #[should_panic(expected = "already holds its lock")]
    fn get_while_holding_the_guard_panics_instead_of_hanging() {
        let v = Value::new(1u32).unwrap();
        let _g = v.lock().unwrap();
        let _ = v.get();
    }

    /// Found by review: a word naming this thread (any writer of the region can forge it) made `get`
    /// and `lock` panic as if this thread held the lock. No guard of ours accounts for it: garbage,
    /// taken over. The same object opened twice is still one lock.
    #[test]
    fn a_forged_word_naming_this_thread_is_taken_over() {
        let me = crate::sys::proc::current();
        let ns = crate::sys::proc::pid_ns_tag();
        let v = Value::new(7u32).unwrap();
        v.shared.lock.force_for_test(me.tid, me, ns);
        assert!(v.lock().is_err(), "a take-over is reported as OwnerDied");
        assert_eq!(v.get(), 7);
        let a = Array::<u8>::new(4).unwrap();
        a.shared.lock.force_for_test(me.tid, me, ns);
        a.set(1, 9);
        assert_eq!(a.get(1), Some(9));
    }

    #[test]
    #[should_panic(expected = "already holds its lock")]
    fn get_through_another_mapping_while_holding_the_guard_panics() {
        let name = crate::region::tests::unique("val2");
        let v = Value::create(&name, 1u32).unwrap();
        let w = Value::<u32>::open(&name).unwrap();
        let _g = v.lock().unwrap();
        let _ = w.get();
    }

    /// The same value mapped twice under two region ids (any writer of the file can rewrite the id in
    /// its header between two opens) is still one lock: a `lock` through the second mapping while a
    /// guard of the first lives must not take the lock over from this very thread. Found by review:
    /// `HELD` knew the lock by the header's id, so the second `lock` took the word naming this thread
    /// for garbage and handed out a second guard, two `&mut` to one value in safe code.
    #[test]
    #[should_panic(expected = "already holds its lock")]
    fn one_value_opened_under_two_ids_is_one_lock() {
        use std::os::unix::fs::FileExt;
        let name = crate::region::tests::unique("val3");
        let v = Value::create(&name, 1u32).unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/shm/{}{name}", crate::region::SHM_PREFIX))
            .unwrap();
        // The header's `region_id` (region/header.rs), rewritten as a peer could.
        let forged = v.shared.region().id() ^ 1;
        file.write_all_at(&forged.to_le_bytes(), 32).unwrap();
        let w = Value::<u32>::open(&name).unwrap();
        assert_ne!(w.shared.region().id(), v.shared.region().id());
        let mut g = v.lock().unwrap();
        // Before the fix: a second guard of the lock this thread holds.
        let h = w.lock();
        *g = 2;
        drop(h);
    }

    #[test]
    #[should_panic(expected = "already holds its lock")]
    fn array_set_while_holding_the_guard_panics_instead_of_hanging() {
        let a = Array::<u8>::new(4).unwrap();
        let _g = a.lock().unwrap();
        a.set(0, 1);
    }
}
