-- Argo CD health check for forgetless.dev/FineTuneJob.
-- Reads the status written by the forgetless operator (core/forgetless/api/schema.py,
-- FineTuneJobStatus): phase, conditions (Ready, Stalled, SpecChanged), observedGeneration, gate.
--   Progressing  the operator has not yet observed the current spec (observedGeneration < generation),
--                or the job is on its way (Pending, Baseline, Training, Evaluating)
--   Healthy      Ready=True (the job succeeded and its gate passed or only warned)
--   Degraded     phase Blocked or Failed; Ready=False with a failure reason (GateBlocked, ...Failed,
--                DeadlineExceeded...); a Pending job rejected by the operator (Ready reason InvalidSpec,
--                VolumeNotFound, OutputVolumeRequired...); Stalled=True; SpecChanged=True (an edit after
--                the start that was not applied)
--   Suspended    phase Suspended or spec.suspend (e.g. waiting for Kueue admission)
-- Written for Lua 5.1 (Argo CD's gopher-lua); tests run it under lua5.1 and lua5.4.
local hs = {}

local function find_condition(status, ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function first_text(...)
  local args = {...}
  for i = 1, select("#", ...) do
    local v = args[i]
    if v ~= nil and v ~= "" then
      return v
    end
  end
  return nil
end

local DEGRADED_REASONS = {
  GateBlocked = true, GateFailed = true, Blocked = true, Failed = true, NoTaskGain = true,
  DeadlineExceeded = true, BackoffLimitExceeded = true, StageFailed = true,
  InvalidSpec = true, SpecInvalid = true, SpecChanged = true,
}

local function is_failure_reason(reason)
  if reason == nil then
    return false
  end
  if DEGRADED_REASONS[reason] then
    return true
  end
  return string.find(reason, "Failed$") ~= nil or string.find(reason, "^Failed") ~= nil
      or string.find(reason, "Invalid") ~= nil or string.find(reason, "NotFound$") ~= nil
      or string.find(reason, "Missing") ~= nil
end

local function gate_message(status)
  if status.gate == nil then
    return nil
  end
  local text = "gate " .. tostring(status.gate.verdict)
  if status.gate.reasons ~= nil and #status.gate.reasons > 0 then
    text = text .. ": " .. table.concat(status.gate.reasons, "; ")
  end
  return text
end

local status = obj.status
local spec = obj.spec or {}
local generation = (obj.metadata or {}).generation

if status == nil or (status.phase == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the forgetless operator to reconcile the job"
  if spec.suspend == true then
    hs.status = "Suspended"
    hs.message = "spec.suspend is true"
  end
  return hs
end

local ready = find_condition(status, "Ready")
local stalled = find_condition(status, "Stalled")
local spec_changed = find_condition(status, "SpecChanged")
local phase = status.phase

local observed = status.observedGeneration
if observed == nil and ready ~= nil then
  observed = ready.observedGeneration
end
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  -- tostring(math.floor(n)): integral text whether the JSON number arrived as an integer or a float
  hs.message = "Waiting for the operator to observe generation " .. tostring(math.floor(generation))
      .. " (observed " .. tostring(math.floor(observed)) .. ")"
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = first_text(ready.message, gate_message(status), "Succeeded")
  return hs
end

if phase == "Blocked" or phase == "Failed" then
  hs.status = "Degraded"
  local detail = phase == "Blocked" and gate_message(status) or nil
  hs.message = phase .. ": " .. (first_text(status.message, ready and ready.message, detail, "see kubectl describe ftj") or "")
  return hs
end

local function degraded_by(c)
  if c ~= nil and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.type .. ": " .. (first_text(c.message, c.reason) or "")
    return true
  end
  return false
end
if degraded_by(stalled) or degraded_by(spec_changed) then
  return hs
end

-- A Pending job whose Ready reason is not plain "Pending" was rejected (InvalidSpec, VolumeNotFound,
-- OutputVolumeRequired...): it waits for a fix by a human.
local rejected = ready ~= nil and (phase == nil or phase == "Pending") and ready.reason ~= nil
    and ready.reason ~= "Pending"
if ready ~= nil and ready.status == "False" and (rejected or is_failure_reason(ready.reason)) then
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. (first_text(ready.message, status.message, gate_message(status)) or "")
  return hs
end

if phase == "Suspended" or spec.suspend == true then
  hs.status = "Suspended"
  hs.message = first_text(status.message, ready and ready.message, "Suspended (spec.suspend is true)")
  return hs
end

if phase == "Succeeded" and ready == nil then
  hs.status = "Healthy"
  hs.message = first_text(status.message, gate_message(status), "Succeeded")
  return hs
end

hs.status = "Progressing"
hs.message = (phase or "Pending") .. ": " .. (first_text(ready and ready.message, status.message, "in progress") or "")
return hs
