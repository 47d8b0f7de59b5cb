//! The map family over serde items: `map`, `imap`, `imap_unordered`, `starmap`, `apply`, their async
//! forms, and the `_with` forms that pass one shared parameter to every call (like
//! `functools.partial`).
//!
//! Items may be borrowed: anything that [`Borrow`]s the function's argument type is accepted
//! (`pool.map(f, &values)` with `values: Vec<T>` and `f: fn(T) -> R`); each item is serialized from the
//! caller's reference and arrives owned in the worker. The function itself takes its argument by value
//! ([`PoolArg`]).

use std::borrow::Borrow;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::item_wire::ArgsToWire;
use super::results::{AsyncResult, Imap, ImapUnordered};
use super::wire::Payload;
use super::worker::{self, TaskKind};
use super::{default_chunksize, Pool};
use crate::error::Result;
use crate::process::fnref::LocalFn;

/// A type a pool task can take as its argument: an owned serde type (`Serialize + DeserializeOwned`),
/// such as `u64`, `String`, `Vec<T>`, tuples, your `#[derive(Serialize, Deserialize)]` structs. Every
/// such type is one; nothing else can be.
///
/// An argument that is a `Vec` of a primitive number type (`Vec<f64>`, `Vec<u8>`, `Vec<i32>`, … any of
/// `u8`–`u128`, `i8`–`i128`, `usize`, `isize`, `f32`, `f64`) travels as the memory of its elements: one
/// copy in, one allocation and one copy out, instead of serde's call per element (a 64 MiB `Vec<f64>`
/// through [`map`](Pool::map) is several times faster than through a pipe with postcard; `cargo bench
/// --bench ipc_vs_pipe`), with no change to your function.
///
/// The items you pass may still be borrowed: `pool.map(f, &values)` serializes each item from your
/// reference, and the worker receives its own copy. What must be owned is the *function's* parameter:
/// write `fn square(x: u64)`, not `fn square(x: &u64)`. For a value shared by every call, use the
/// `_with` forms ([`map_with`](Pool::map_with) and family), whose function takes it by reference:
/// `fn f(param: &P, item: T)`.
///
/// Why not `&T` as for [`Process::new`](crate::Process::new) ([`ProcessArg`](crate::process::ProcessArg))?
/// A worker runs many calls. It could decode each item and lend it to the function only if the
/// function accepts *every* lifetime; but `fn keep(x: &'static u64)` also has the type `fn(A) -> R`
/// (with `A = &'static u64`), could store the reference in a `static`, and would then read a freed item
/// at its next call. Nothing in `fn(A) -> R` tells the two apart, and keeping every item alive for the
/// worker's whole life would grow without bound, so the pool refuses borrowed parameter types at
/// compile time. For `&u64`, `&[f64]`, `&MyStruct` rustc says:
///
/// ```text
/// error[E0277]: `&u64` cannot be the argument of a pool task
///   |     pool.map(square, &[1, 2, 3])
///   |              ^^^^^^ the function takes `&u64`
///   = note: a pool task takes its argument by value: write `fn f(x: T)`, not `fn f(x: &T)`
///           (`String` for `&str`, `Vec<T>` for `&[T]`); the items can still be borrowed: `pool.map(f, &items)`
///   = note: for a value shared by every call, use `map_with(f, &param, items)` with `fn f(param: &P, x: T)`
/// ```
///
/// `&str` and `&[u8]` implement serde's `Deserialize` for *some* lifetimes, so for them rustc stops
/// later, with "implementation of `Deserialize` is not general enough"; the fix is the same (`String`,
/// `Vec<u8>`).
///
/// # Examples
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = mproc::Pool::builder().workers(2).build()?;
/// let values = vec![1, 2, 3];
/// assert_eq!(pool.map(square, &values)?, vec![1, 4, 9]); // borrowed items, owned parameter
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// A borrowed parameter does not compile:
/// ```compile_fail,E0277
/// fn square(x: &u64) -> u64 {
///     x * x
/// }
///
/// let pool = mproc::Pool::new().unwrap();
/// let squares = pool.map(square, &[1, 2, 3]);
/// ```
/// ```compile_fail
/// fn greet(name: &str) -> String {
///     format!("hello, {name}")
/// }
///
/// let pool = mproc::Pool::new().unwrap();
/// let greetings = pool.map(greet, ["Bob", "Alice"]);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the argument of a pool task",
    label = "the function takes `{Self}`",
    note = "a pool task takes its argument by value: write `fn f(x: T)`, not `fn f(x: &T)` (`String` for `&str`, `Vec<T>` for `&[T]`); the items can still be borrowed: `pool.map(f, &items)`",
    note = "for a value shared by every call, use `map_with(f, &param, items)` with `fn f(param: &P, x: T)`"
)]
pub trait PoolArg: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> PoolArg for T {}

impl Pool {
    /// Cuts `items` into chunks of `chunksize` (default: about four per worker) and encodes each as a
    /// task payload: `Vec<A>`, or `(P, Vec<A>)` when there are parameters.
    fn chunk_items<A, B, P>(
        &self,
        items: impl IntoIterator<Item = B>,
        chunksize: Option<usize>,
        params: Option<&P>,
    ) -> Result<(Vec<Payload>, Vec<usize>)>
    where
        A: Serialize,
        B: Borrow<A>,
        P: Serialize + ?Sized,
    {
        let items: Vec<B> = items.into_iter().collect();
        let size = chunksize
            .unwrap_or_else(|| default_chunksize(items.len(), self.workers))
            .max(1);
        let mut payloads = Vec::new();
        let mut lens = Vec::new();
        for chunk in items.chunks(size) {
            let seq = ArgsToWire::<A, B>::new(chunk);
            payloads.push(match params {
                None => Payload::encode(&seq)?,
                Some(p) => Payload::encode(&(p, seq))?,
            });
            lens.push(chunk.len());
        }
        Ok((payloads, lens))
    }

    /// Submits the chunks of `items` for `func` and returns the job with the chunks' lengths.
    #[track_caller]
    fn submit_items<A, B, P>(
        &self,
        func: LocalFn<TaskKind>,
        items: impl IntoIterator<Item = B>,
        chunksize: Option<usize>,
        params: Option<&P>,
    ) -> Result<(std::sync::Arc<super::Job>, Vec<usize>)>
    where
        A: Serialize,
        B: Borrow<A>,
        P: Serialize + ?Sized,
    {
        let (payloads, lens) = self.chunk_items::<A, B, P>(items, chunksize, params)?;
        Ok((self.submit(func, payloads)?, lens))
    }

    /// Starts `f` on every item; results come back through the returned handle. Items are sent in chunks
    /// of `chunksize` (default: about four chunks per worker).
    ///
    /// # Examples
    /// ```
    /// fn cube(x: u64) -> u64 {
    ///     x * x * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let pending = pool.map_async(cube, 1..=3, None)?;
    /// // ... do something else meanwhile ...
    /// assert_eq!(pending.get()?, vec![1, 8, 27]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode) if an item cannot be serialized, [`Error::PoolClosed`](crate::Error::PoolClosed).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_async<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = impl Borrow<A>>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        let (job, lens) =
            self.submit_items::<A, _, ()>(worker::map_fn(f), items, chunksize, None)?;
        Ok(AsyncResult::all_items(job, lens))
    }

    /// `f` applied to every item, in order, like Python's `Pool.map`. Items may be owned or borrowed.
    ///
    /// # Examples
    /// ```
    /// fn word_len(w: String) -> usize {
    ///     w.len()
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let words = vec!["alpha".to_owned(), "be".to_owned()];
    /// assert_eq!(pool.map(word_len, &words)?, vec![5, 2]); // borrowed: `words` is still ours
    /// assert_eq!(pool.map(word_len, words)?, vec![5, 2]); // owned
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// The error of the lowest-index item that failed ([`Error::TaskPanicked`](crate::Error::TaskPanicked), [`Error::WorkerDied`](crate::Error::WorkerDied), a
    /// decode error), after every item has finished; [`Error::PoolClosed`](crate::Error::PoolClosed). Use
    /// [`map_each`](Pool::map_each) to keep the results of the items that succeeded.
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = impl Borrow<A>>,
    ) -> Result<Vec<R>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        self.map_async(f, items, None)?.get()
    }

    /// Like [`map`](Pool::map) with an explicit chunk size.
    ///
    /// # Examples
    /// ```
    /// fn double(x: i32) -> i32 {
    ///     2 * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// assert_eq!(pool.map_chunksize(double, [1, 2, 3, 4, 5], 2)?, vec![2, 4, 6, 8, 10]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_chunksize<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = impl Borrow<A>>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        self.map_async(f, items, Some(chunksize))?.get()
    }

    /// `f` applied to every item, each item's own result in order: a failing item does not hide the
    /// others' work.
    ///
    /// # Examples
    /// ```
    /// fn checked_inverse(x: i32) -> i32 {
    ///     assert!(x != 0, "no inverse of zero");
    ///     100 / x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let each = pool.map_each(checked_inverse, [4, 0, 5])?;
    /// assert_eq!(*each[0].as_ref().unwrap(), 25);
    /// assert!(matches!(each[1], Err(mproc::Error::TaskPanicked { task: 1, .. })));
    /// assert_eq!(*each[2].as_ref().unwrap(), 20);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// Only for the call as a whole: [`Error::Encode`](crate::Error::Encode), [`Error::PoolClosed`](crate::Error::PoolClosed).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_each<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = impl Borrow<A>>,
    ) -> Result<Vec<Result<R>>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        Ok(self.imap(f, items, None)?.collect())
    }

    /// Results in order as they become available (Python's `imap`).
    ///
    /// # Examples
    /// ```
    /// fn square(x: u32) -> u32 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let mut total = 0;
    /// for r in pool.imap(square, 1..=4, Some(1))? {
    ///     total += r?; // each result as soon as it and every earlier one is ready
    /// }
    /// assert_eq!(total, 30);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode), [`Error::PoolClosed`](crate::Error::PoolClosed); each item's own error comes from the iterator.
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn imap<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = impl Borrow<A>>,
        chunksize: Option<usize>,
    ) -> Result<Imap<R>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        let (job, lens) =
            self.submit_items::<A, _, ()>(worker::map_fn(f), items, chunksize, None)?;
        Ok(Imap::new(job, lens))
    }

    /// Results as each chunk finishes, in any order, each with its item index (Python's
    /// `imap_unordered`).
    ///
    /// # Examples
    /// ```
    /// fn square(x: u32) -> u32 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let mut got: Vec<(usize, u32)> = pool
    ///     .imap_unordered(square, [3, 4], None)?
    ///     .map(|(i, r)| (i, r.unwrap()))
    ///     .collect();
    /// got.sort();
    /// assert_eq!(got, vec![(0, 9), (1, 16)]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn imap_unordered<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = impl Borrow<A>>,
        chunksize: Option<usize>,
    ) -> Result<ImapUnordered<R>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        let (job, lens) =
            self.submit_items::<A, _, ()>(worker::map_fn(f), items, chunksize, None)?;
        Ok(ImapUnordered::new(job, lens))
    }

    /// `f(a, b)` for every pair, in order (Python's `starmap`).
    ///
    /// # Examples
    /// ```
    /// fn power(base: u64, exp: u32) -> u64 {
    ///     base.pow(exp)
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// assert_eq!(pool.starmap(power, [(2, 10), (3, 3)])?, vec![1024, 27]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn starmap<A, B, R>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = impl Borrow<(A, B)>>,
    ) -> Result<Vec<R>>
    where
        A: PoolArg,
        B: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        let (job, lens) =
            self.submit_items::<(A, B), _, ()>(worker::star_fn(f), items, None, None)?;
        AsyncResult::all_items(job, lens).get()
    }

    /// Starts `f(args)` on a worker (Python's `apply_async`).
    ///
    /// # Examples
    /// ```
    /// fn shout(s: String) -> String {
    ///     s.to_uppercase()
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(1).build()?;
    /// let r = pool.apply_async(shout, "hi".to_owned())?;
    /// assert_eq!(r.get()?, "HI");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode), [`Error::PoolClosed`](crate::Error::PoolClosed).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, args: impl Borrow<A>) -> Result<AsyncResult<R>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        let (job, lens) =
            self.submit_items::<A, _, ()>(worker::map_fn(f), [args], Some(1), None)?;
        Ok(AsyncResult::one_item(job, lens))
    }

    /// `f(args)` on a worker, waiting for the result (Python's `apply`).
    ///
    /// # Examples
    /// ```
    /// fn add(pair: (i32, i32)) -> i32 {
    ///     pair.0 + pair.1
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(1).build()?;
    /// assert_eq!(pool.apply(add, (2, 3))?, 5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::TaskPanicked`](crate::Error::TaskPanicked), [`Error::WorkerDied`](crate::Error::WorkerDied), [`Error::Encode`](crate::Error::Encode), [`Error::PoolClosed`](crate::Error::PoolClosed).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: impl Borrow<A>) -> Result<R>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        self.apply_async(f, args)?.get()
    }

    /// Like [`map_async`](Pool::map_async), passing `params` to every call: `f(&params, item)`.
    /// `params` is serialized once per chunk, not once per item.
    ///
    /// # Examples
    /// ```
    /// fn scale(factor: &f64, x: f64) -> f64 {
    ///     factor * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let r = pool.map_async_with(scale, &10.0, [1.0, 2.5], None)?;
    /// assert_eq!(r.get()?, vec![10.0, 25.0]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map_async`](Pool::map_async).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_async_with<P, A, R>(
        &self,
        f: fn(&P, A) -> R,
        params: &P,
        items: impl IntoIterator<Item = impl Borrow<A>>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        P: Serialize + DeserializeOwned,
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        let (job, lens) =
            self.submit_items::<A, _, P>(worker::map_with_fn(f), items, chunksize, Some(params))?;
        Ok(AsyncResult::all_items(job, lens))
    }

    /// `f(&params, item)` for every item, in order: [`map`](Pool::map) with a shared parameter (joblib's
    /// and `functools.partial`'s use).
    ///
    /// # Examples
    /// ```
    /// fn count_above(threshold: &u32, values: Vec<u32>) -> usize {
    ///     values.iter().filter(|&&v| v > *threshold).count()
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let rows = vec![vec![1, 5, 9], vec![7, 8]];
    /// assert_eq!(pool.map_with(count_above, &6, &rows)?, vec![1, 2]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_with<P, A, R>(
        &self,
        f: fn(&P, A) -> R,
        params: &P,
        items: impl IntoIterator<Item = impl Borrow<A>>,
    ) -> Result<Vec<R>>
    where
        P: Serialize + DeserializeOwned,
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        self.map_async_with(f, params, items, None)?.get()
    }

    /// [`imap`](Pool::imap) with a shared parameter: `f(&params, item)`, results in order.
    ///
    /// # Examples
    /// ```
    /// fn offset(by: &i64, x: i64) -> i64 {
    ///     x + by
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let out: Vec<i64> = pool.imap_with(offset, &100, [1, 2, 3], None)?.map(Result::unwrap).collect();
    /// assert_eq!(out, vec![101, 102, 103]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn imap_with<P, A, R>(
        &self,
        f: fn(&P, A) -> R,
        params: &P,
        items: impl IntoIterator<Item = impl Borrow<A>>,
        chunksize: Option<usize>,
    ) -> Result<Imap<R>>
    where
        P: Serialize + DeserializeOwned,
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        let (job, lens) =
            self.submit_items::<A, _, P>(worker::map_with_fn(f), items, chunksize, Some(params))?;
        Ok(Imap::new(job, lens))
    }

    /// [`imap_unordered`](Pool::imap_unordered) with a shared parameter: `f(&params, item)`.
    ///
    /// # Examples
    /// ```
    /// fn offset(by: &i64, x: i64) -> i64 {
    ///     x + by
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let mut out: Vec<i64> = pool
    ///     .imap_unordered_with(offset, &1, [10, 20], None)?
    ///     .map(|(_, r)| r.unwrap())
    ///     .collect();
    /// out.sort();
    /// assert_eq!(out, vec![11, 21]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn imap_unordered_with<P, A, R>(
        &self,
        f: fn(&P, A) -> R,
        params: &P,
        items: impl IntoIterator<Item = impl Borrow<A>>,
        chunksize: Option<usize>,
    ) -> Result<ImapUnordered<R>>
    where
        P: Serialize + DeserializeOwned,
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        let (job, lens) =
            self.submit_items::<A, _, P>(worker::map_with_fn(f), items, chunksize, Some(params))?;
        Ok(ImapUnordered::new(job, lens))
    }
}
