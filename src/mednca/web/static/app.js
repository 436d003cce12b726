// The mednca serve page: upload a scan, follow its job, show the result in NiiVue.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, models: [], nv: null, jobId: null, running: false };

function idle() {
  state.running = false;
  $("segment").disabled = !state.file;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function apiError(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) {
    return `the server answered ${response.status} ${response.statusText}`;
  }
}

async function loadModels() {
  const response = await fetch("/api/models");
  if (!response.ok) { showError(await apiError(response)); return; }
  state.models = await response.json();
  for (const m of state.models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name;
    $("model").appendChild(option);
  }
  describeModel();
}

function describeModel() {
  const m = state.models.find((x) => x.name === $("model").value);
  $("model-info").textContent = m ? `${m.description} · ${m.ensemble} passes` : "";
}

function chooseFile(file) {
  state.file = file || null;
  $("file-label").textContent = file ? file.name : "Choose or drop a scan";
  $("segment").disabled = !file || state.running;
  showError("");
}

async function segment() {
  if (!state.file) return;
  showError("");
  $("result").hidden = true;
  state.running = true;
  $("segment").disabled = true;
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  form.append("model", $("model").value);
  $("status").textContent = "uploading...";
  let response;
  try {
    response = await fetch("/api/jobs", { method: "POST", body: form });
  } catch (e) {
    showError(`the upload failed: is mednca serve still running? (${e.message})`);
    $("status").textContent = "";
    idle();
    return;
  }
  if (!response.ok) {
    showError(await apiError(response));
    $("status").textContent = "";
    idle();
    return;
  }
  state.jobId = (await response.json()).id;
  follow(state.jobId);
}

async function follow(id) {
  if (id !== state.jobId) return;  // a newer job replaced this one
  let response;
  try {
    response = await fetch(`/api/jobs/${id}`);
  } catch (e) {
    setTimeout(() => follow(id), 2000);  // the server may be busy or restarting: keep asking
    return;
  }
  if (id !== state.jobId) return;
  if (!response.ok) { showError(await apiError(response)); idle(); return; }
  const job = await response.json();
  $("progress").hidden = job.status === "done" || job.status === "failed";
  $("progress").value = job.progress;
  if (job.status === "queued") {
    $("status").textContent = `waiting: ${job.queue_position} job(s) ahead`;
  } else if (job.status === "running") {
    $("status").textContent = job.stage;
  }
  if (job.status === "failed") {
    $("status").textContent = "";
    showError(job.error);
    idle();
    return;
  }
  if (job.status === "done") {
    $("status").textContent = `done: ${job.filename} with ${job.model}`;
    await showResult(id, job.result);
    idle();
    return;
  }
  setTimeout(() => follow(id), 400);
}

function showBadge(result) {
  const badge = $("badge");
  if (result.review === null || result.review === undefined) {
    badge.className = "badge unknown";
    badge.textContent = "no review threshold";
  } else if (result.review) {
    badge.className = "badge review";
    badge.textContent = "please review";
  } else {
    badge.className = "badge fine";
    badge.textContent = "looks fine";
  }
  $("reason").textContent = (result.reason || "") + (result.seg_error ? ` (no DICOM SEG: ${result.seg_error})` : "");
  $("volume").textContent = result.volume_ml.toFixed(2);
  $("quality").textContent = result.quality === null ? "n/a" : result.quality.toPrecision(3);
}

async function showResult(id, result) {
  showBadge(result);
  const base = `/api/jobs/${id}`;
  $("download-mask").href = `${base}/mask`;
  $("download-report").href = `${base}/report`;
  $("download-seg").href = `${base}/seg`;
  $("download-seg").hidden = !result.seg;
  $("result").hidden = false;
  if (!state.nv) {
    state.nv = new niivue.Niivue({ show3Dcrosshair: true, backColor: [0, 0, 0, 1], crosshairColor: [0.2, 0.9, 0.3, 1] });
    await state.nv.attachTo("viewer");
    state.nv.setSliceType(state.nv.sliceTypeMultiplanar);
  }
  const opacity = parseFloat($("opacity").value);
  await state.nv.loadVolumes([
    { url: `${base}/image`, name: "scan.nii.gz" },
    { url: `${base}/mask`, name: "mask.nii.gz", colormap: "red", opacity: opacity },
    { url: `${base}/uncertainty`, name: "uncertainty.nii.gz", colormap: "warm",
      opacity: $("show-uncertainty").checked ? 0.6 : 0 },
  ]);
  document.body.dataset.viewer = "ready";
}

function setOverlay(index, opacity) {
  if (state.nv && state.nv.volumes.length > index) {
    state.nv.setOpacity(index, opacity);
    state.nv.updateGLVolume();
  }
}

function wire() {
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  $("model").addEventListener("change", describeModel);
  $("segment").addEventListener("click", segment);
  $("opacity").addEventListener("input", (e) => setOverlay(1, parseFloat(e.target.value)));
  $("show-uncertainty").addEventListener("change", (e) => setOverlay(2, e.target.checked ? 0.6 : 0));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
}

wire();
loadModels();
