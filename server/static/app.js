/* dxgraph web app: the drop zone of the submit forms and the live progress of a job or a cohort
   (Server-Sent Events).
   No framework; the pages work without it except for the live updates. */
"use strict";

function dropZone(zone) {
  var input = zone.querySelector("input[type=file]");
  var list = zone.querySelector(".file-list");
  if (!input) { return; }
  function show() {
    if (!list) { return; }
    list.textContent = "";
    Array.prototype.forEach.call(input.files, function (f) {
      var li = document.createElement("li");
      li.textContent = f.name + " (" + Math.max(1, Math.round(f.size / 1024)) + " KiB)";
      list.appendChild(li);
    });
  }
  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.add("dragging"); });
  });
  ["dragleave", "dragend"].forEach(function (type) {
    zone.addEventListener(type, function () { zone.classList.remove("dragging"); });
  });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    zone.classList.remove("dragging");
    if (!e.dataTransfer || !e.dataTransfer.files.length) { return; }
    var all = new DataTransfer();
    Array.prototype.forEach.call(input.files, function (f) { all.items.add(f); });
    Array.prototype.forEach.call(e.dataTransfer.files, function (f) { all.items.add(f); });
    input.files = all.files;
    show();
  });
  input.addEventListener("change", show);
}

function jobProgress(section) {
  var url = section.getAttribute("data-job-events");
  if (!url || !window.EventSource) { return; }
  var statusText = document.getElementById("job-status-text");
  var attempts = document.getElementById("job-attempts");
  var runBox = document.getElementById("job-run");
  var runLink = document.getElementById("job-run-link");
  var runId = document.getElementById("job-run-id");
  var errorBox = document.getElementById("job-error");
  var order = ["pending", "running", "completed"];
  function steps(status) {
    var at = order.indexOf(status === "failed" ? "completed" : status);
    section.querySelectorAll(".steps li").forEach(function (li, i) {
      li.className = i < at || status === "completed" ? "done" : (i === at ? (status === "failed" ? "failed" : "current") : "");
    });
  }
  function update(job) {
    statusText.textContent = job.status;
    statusText.className = "status status-" + job.status;
    attempts.textContent = String(job.attempts);
    section.setAttribute("data-status", job.status);
    steps(job.status);
    if (job.error) { errorBox.textContent = job.error; errorBox.hidden = false; }
    if (job.run_id) {
      runLink.setAttribute("href", "/runs/" + encodeURIComponent(job.run_id));
      runId.textContent = job.run_id;
      runBox.hidden = false;
    }
  }
  steps(section.getAttribute("data-status") || statusText.textContent.trim());
  var source = new EventSource(url);
  source.addEventListener("status", function (e) { update(JSON.parse(e.data)); });
  source.addEventListener("done", function (e) {
    var done = JSON.parse(e.data);
    done.attempts = attempts.textContent;
    update(done);
    section.setAttribute("data-done", "true");
    source.close();
  });
}

function cohortProgress(section) {
  var url = section.getAttribute("data-cohort-events");
  if (!url || !window.EventSource || section.getAttribute("data-done") === "true") { return; }
  var bar = document.getElementById("cohort-progress");
  function set(id, value) {
    var el = document.getElementById(id);
    if (el) { el.textContent = String(value); }
  }
  var source = new EventSource(url);
  source.addEventListener("status", function (e) {
    var s = JSON.parse(e.data);
    var ended = s.completed + s.failed;
    bar.value = ended;
    bar.textContent = ended + " of " + s.n_cases;
    set("cohort-ended", ended);
    set("cohort-completed", s.completed);
    set("cohort-failed", s.failed);
    set("cohort-running", s.running);
    set("cohort-pending", s.pending);
  });
  source.addEventListener("done", function () {
    source.close();
    section.setAttribute("data-done", "true");
    window.location.reload();  /* the final cases, metrics and report link, as the server renders them */
  });
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-drop-zone]").forEach(dropZone);
  document.querySelectorAll("[data-job-events]").forEach(jobProgress);
  document.querySelectorAll("[data-cohort-events]").forEach(cohortProgress);
});
