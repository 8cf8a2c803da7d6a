//! Coalescing of concurrent coordinator calls into batch calls.
//!
//! Many small files written at once (a `dfs bench`, a directory copy, an
//! application with many writers sharing one [`crate::Client`]) each need an
//! UploadFile and a ConfirmUpload. One gRPC call costs more CPU on both ends
//! than the coordinator's work for a small file, so calls that are waiting
//! at the same moment go out together as one UploadFiles or ConfirmUploads.
//!
//! Nothing waits on a timer: a call goes out at once while fewer than
//! [`MAX_IN_FLIGHT`] batches are on the wire, and calls that arrive while
//! they are busy go out together in the next one. A lone call therefore
//! costs what a unary call costs (a batch of one is sent as the unary call),
//! and a busy client sends few, full batches.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use dfs_proto::{
    CallError, ConfirmUploadRequest, ConfirmUploadResponse, ConfirmUploadsRequest,
    UploadFileRequest, UploadFilesRequest, UploadPlan, confirm_upload_result, upload_file_result,
};
use futures::future::join_all;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Code, Status};

use crate::coordinators::Coordinators;

/// Batches on the wire at once per batcher: one being answered while the
/// next fills keeps the coordinator's committer busy without queueing.
pub const MAX_IN_FLIGHT: usize = 2;
/// Most calls per batch (the coordinator accepts up to 1024).
pub const MAX_BATCH: usize = 256;

/// The answer to one call of a batch.
type Reply<Resp> = oneshot::Sender<Result<Resp, Status>>;

/// Sends one batch, answering one result per request in request order.
pub type SendBatch<Req, Resp> = Arc<
    dyn Fn(
            Vec<Req>,
        )
            -> Pin<Box<dyn Future<Output = Result<Vec<Result<Resp, Status>>, Status>> + Send>>
        + Send
        + Sync,
>;

/// A queue of calls of one kind, drained into batches by a background task.
/// The task ends when the last clone of the batcher is dropped.
pub struct Batcher<Req, Resp> {
    queue: mpsc::UnboundedSender<(Req, Reply<Resp>)>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the draining task on the current tokio runtime.
    pub fn start(send: SendBatch<Req, Resp>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(drain(rx, send));
        Batcher { queue }
    }

    /// Makes one call, batched with whatever else is waiting.
    pub async fn call(&self, request: Req) -> Result<Resp, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((request, reply))
            .map_err(|_| Status::cancelled("the client's batching task has stopped"))?;
        answer
            .await
            .map_err(|_| Status::cancelled("the batch carrying this call was dropped"))?
    }
}

/// Takes calls off the queue whenever a batch slot is free: everything
/// queued by then (up to [`MAX_BATCH`]) goes out as one batch.
async fn drain<Req: Send + 'static, Resp: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<(Req, Reply<Resp>)>,
    send: SendBatch<Req, Resp>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut calls = vec![first];
        while calls.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(call) => calls.push(call),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
        let batch = send(requests);
        tokio::spawn(async move {
            let _slot = slot;
            answer(replies, batch.await);
        });
    }
}

/// Hands each caller its result; a batch that failed as a whole (or answered
/// the wrong number of results) fails every call in it.
fn answer<Resp>(replies: Vec<Reply<Resp>>, outcome: Result<Vec<Result<Resp, Status>>, Status>) {
    match outcome {
        Ok(results) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Ok(results) => {
            let status = Status::internal(format!(
                "the coordinator answered {} results to a batch of {} calls",
                results.len(),
                replies.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

/// A coordinator call that has a batch form.
pub trait Batchable: Clone + Send + Sync + 'static {
    /// The unary call's answer.
    type Response: Send + 'static;

    /// The unary call.
    fn call_one(
        coordinator: crate::coordinators::Coord,
        request: Self,
    ) -> impl Future<Output = Result<Self::Response, Status>> + Send;

    /// The batch call: one result per request, in order.
    fn call_batch(
        coordinator: crate::coordinators::Coord,
        requests: Vec<Self>,
    ) -> impl Future<Output = Result<Vec<Result<Self::Response, Status>>, Status>> + Send;
}

impl Batchable for UploadFileRequest {
    type Response = UploadPlan;

    async fn call_one(
        mut c: crate::coordinators::Coord,
        request: Self,
    ) -> Result<UploadPlan, Status> {
        c.upload_file(request).await.map(|r| r.into_inner())
    }

    async fn call_batch(
        mut c: crate::coordinators::Coord,
        files: Vec<Self>,
    ) -> Result<Vec<Result<UploadPlan, Status>>, Status> {
        let results = c.upload_files(UploadFilesRequest { files }).await?;
        Ok(results
            .into_inner()
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(upload_file_result::Result::Plan(plan)) => Ok(plan),
                Some(upload_file_result::Result::Error(e)) => Err(status_of(e)),
                None => Err(Status::internal("empty UploadFileResult")),
            })
            .collect())
    }
}

impl Batchable for ConfirmUploadRequest {
    type Response = ConfirmUploadResponse;

    async fn call_one(
        mut c: crate::coordinators::Coord,
        request: Self,
    ) -> Result<ConfirmUploadResponse, Status> {
        c.confirm_upload(request).await.map(|r| r.into_inner())
    }

    async fn call_batch(
        mut c: crate::coordinators::Coord,
        uploads: Vec<Self>,
    ) -> Result<Vec<Result<ConfirmUploadResponse, Status>>, Status> {
        let results = c.confirm_uploads(ConfirmUploadsRequest { uploads }).await?;
        Ok(results
            .into_inner()
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(confirm_upload_result::Result::Confirmed(c)) => Ok(c),
                Some(confirm_upload_result::Result::Error(e)) => Err(status_of(e)),
                None => Err(Status::internal("empty ConfirmUploadResult")),
            })
            .collect())
    }
}

/// The batcher of one kind of coordinator call: the batch form, or the
/// unary call per request for a batch of one and, from its first
/// UNIMPLEMENTED on, for a coordinator that predates the batch form.
pub(crate) fn coordinator_batcher<R: Batchable>(
    coordinators: Coordinators,
) -> Batcher<R, R::Response> {
    let unsupported = Arc::new(AtomicBool::new(false));
    Batcher::start(Arc::new(move |requests: Vec<R>| {
        let c = coordinators.clone();
        let unsupported = unsupported.clone();
        Box::pin(async move {
            if requests.len() > 1 && !unsupported.load(Ordering::Relaxed) {
                match c
                    .call(|client| R::call_batch(client, requests.clone()))
                    .await
                {
                    Err(st) if st.code() == Code::Unimplemented => {
                        unsupported.store(true, Ordering::Relaxed);
                    }
                    answered => return answered,
                }
            }
            let c = &c;
            Ok(join_all(
                requests
                    .into_iter()
                    .map(|r| async move { c.call(|client| R::call_one(client, r.clone())).await }),
            )
            .await)
        })
    }))
}

/// The status one call of a batch would have had on its own.
fn status_of(e: CallError) -> Status {
    let code = match Code::from_i32(e.code) {
        Code::Ok => Code::Unknown,
        code => code,
    };
    Status::new(code, e.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A batch sender that records batch sizes and answers each request
    /// with itself doubled after `gate` opens.
    fn recording(
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: Arc<tokio::sync::Notify>,
    ) -> SendBatch<u32, u32> {
        Arc::new(move |reqs: Vec<u32>| {
            sizes.lock().unwrap().push(reqs.len());
            let gate = gate.clone();
            Box::pin(async move {
                gate.notified().await;
                Ok(reqs
                    .into_iter()
                    .map(|r| {
                        if r == 13 {
                            Err(Status::invalid_argument("unlucky"))
                        } else {
                            Ok(r * 2)
                        }
                    })
                    .collect())
            })
        })
    }

    #[tokio::test]
    async fn calls_waiting_while_batches_are_in_flight_go_out_together() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let batcher = Batcher::start(recording(sizes.clone(), gate.clone()));
        // Two lone calls take both slots; ten more queue behind them.
        let mut calls = Vec::new();
        for i in 0..12u32 {
            let b = batcher.clone();
            calls.push(tokio::spawn(async move { b.call(i).await }));
            tokio::task::yield_now().await;
        }
        while sizes.lock().unwrap().len() < MAX_IN_FLIGHT {
            tokio::task::yield_now().await;
        }
        // Open the gate until every call is answered.
        let opener = tokio::spawn(async move {
            loop {
                gate.notify_waiters();
                tokio::task::yield_now().await;
            }
        });
        let mut results = Vec::new();
        for c in calls {
            results.push(c.await.unwrap());
        }
        opener.abort();
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.as_ref().unwrap(), &(i as u32 * 2), "call {i}");
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 12);
        assert!(
            sizes.len() <= 4 && sizes.iter().any(|&n| n >= 5),
            "the calls queued behind busy slots were not batched: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn each_call_gets_its_own_error_and_a_failed_batch_fails_all_its_calls() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let batcher = Batcher::start(recording(sizes, gate.clone()));
        let opener = tokio::spawn(async move {
            loop {
                gate.notify_waiters();
                tokio::task::yield_now().await;
            }
        });
        let err = batcher.call(13).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(batcher.call(4).await.unwrap(), 8);
        opener.abort();

        let failing: SendBatch<u32, u32> =
            Arc::new(|_| Box::pin(async { Err(Status::unavailable("coordinator gone")) }));
        let batcher = Batcher::start(failing);
        let (a, b) = tokio::join!(batcher.call(1), batcher.call(2));
        assert_eq!(a.unwrap_err().code(), tonic::Code::Unavailable);
        assert_eq!(b.unwrap_err().code(), tonic::Code::Unavailable);

        let short: SendBatch<u32, u32> = Arc::new(|_| Box::pin(async { Ok(vec![]) }));
        let batcher = Batcher::start(short);
        assert_eq!(
            batcher.call(1).await.unwrap_err().code(),
            tonic::Code::Internal
        );
    }
}
